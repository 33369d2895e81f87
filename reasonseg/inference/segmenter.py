"""The high-level API: ``Segmenter.from_pretrained(...).predict(image, text)`` and multi-turn chat sessions.

A chat session is segment-anything's predictor shape: the image is encoded once (vision tower and SAM) when the
session starts, and every question only runs the language model (continuing its KV cache) and the mask decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoints.loading import load_model_and_processor
from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
from ..processing.image_io import load_image
from ..processing.processing_reasonseg import ReasonSegProcessor
from .generation import greedy_decode

FORCED_NOTE = "(no [SEG] in the answer; mask forced)"


@dataclass
class Prediction:
    """text: the answer (no image placeholder, no special tokens); masks: one ``HxW`` bool array per [SEG] at the
    input image's size; mask_logits: the float32 logits before thresholding at 0; scores: SAM's predicted IoU per
    mask; token_ids: the generated ids; seg_forced: whether ``force_seg`` had to append the [SEG]."""

    text: str
    masks: list[np.ndarray] = field(default_factory=list)
    mask_logits: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    seg_forced: bool = False

    @property
    def num_masks(self) -> int:
        return len(self.masks)


def _prediction(text: str, masks: torch.Tensor, scores: torch.Tensor, token_ids: list[int], forced: bool) -> Prediction:
    logits = [m.float().cpu().numpy() for m in masks]
    if forced:
        text = f"{text} {FORCED_NOTE}".strip()
    return Prediction(
        text=text,
        masks=[m > 0 for m in logits],
        mask_logits=logits,
        scores=[float(s) for s in scores],
        token_ids=token_ids,
        seg_forced=forced,
    )


class Segmenter:
    """A loaded model + processor, answering questions about images with text and masks."""

    def __init__(self, model: ReasonSegForCausalLM, processor: ReasonSegProcessor):
        self.model = model.eval()
        self.processor = processor
        if model.config.seg_token_id is None:
            model.config.seg_token_id = processor.seg_token_id

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        precision: str = "fp32",
        device: str | None = None,
        vision_tower: str | None = None,
        load_in_8bit: bool = False,
        load_in_4bit: bool = False,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
    ) -> "Segmenter":
        """Load a reasonseg or original LISA checkpoint (local directory or hub id); None = the bundled demo."""
        if name_or_path is None:
            from ..assets import default_model_path

            name_or_path = default_model_path()
        model, processor = load_model_and_processor(
            name_or_path,
            precision=precision,
            device=device,
            vision_tower=vision_tower,
            load_in_8bit=load_in_8bit,
            load_in_4bit=load_in_4bit,
            device_map=device_map,
            max_memory=max_memory,
        )
        return cls(model, processor)

    def chat(self, image) -> "ChatSession":
        """Start a conversation about one image (path, PIL image or HxWx3 uint8 array)."""
        return ChatSession(self, image)

    def predict(self, image, prompt: str, max_new_tokens: int = 512, force_seg: bool = False) -> Prediction:
        """Answer one question about one image."""
        return self.chat(image).ask(prompt, max_new_tokens=max_new_tokens, force_seg=force_seg)

    @torch.no_grad()
    def predict_batch(
        self, images: list, prompts, batch_size: int = 8, max_new_tokens: int = 512, force_seg: bool = False
    ) -> list[Prediction]:
        """Answer ``prompts[i]`` (or one prompt for all) about ``images[i]``, ``batch_size`` pairs per forward pass.

        Images are encoded together, prompts are left-padded and decoded together; the results equal
        :meth:`predict` one pair at a time (same tokens; logits equal to float rounding).
        """
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            from ..errors import InputError

            raise InputError(f"{len(images)} images but {len(prompts)} prompts; give one prompt or one per image")
        predictions: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = list(zip(images[start : start + batch_size], prompts[start : start + batch_size]))
            predictions.extend(self._predict_chunk(chunk, max_new_tokens, force_seg))
        return predictions

    def _predict_chunk(self, chunk, max_new_tokens: int, force_seg: bool) -> list[Prediction]:
        model, processor = self.model, self.processor
        loaded = [load_image(image) for image, _ in chunk]
        inputs = [processor.preprocess_image(image) for image in loaded]
        features = model.encode_images(torch.cat([i.pixel_values for i in inputs]))
        sam_embeddings = model.encode_sam_images(torch.cat([i.sam_pixel_values for i in inputs]))
        id_lists = [processor.encode(processor.conversation_prompt([(prompt, None)])) for _, prompt in chunk]
        longest = max(len(ids) for ids in id_lists)
        input_ids = torch.full((len(chunk), longest), processor.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, ids in enumerate(id_lists):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids)
            attention[row, longest - len(ids) :] = 1
        spliced = model.splice_inputs(input_ids, attention, features, list(range(len(chunk))), padding_side="left")
        result = greedy_decode(
            model.decoder,
            model.get_output_embeddings(),
            model.get_input_embeddings(),
            spliced.inputs_embeds,
            spliced.attention_mask,
            spliced.position_ids,
            max_new_tokens,
            processor.eos_token_id,
        )
        predictions = []
        seg_id = model.config.seg_token_id
        for row, (image, prompt) in enumerate(chunk):
            new_ids, states = result.new_ids[row], result.step_states[row]
            has_seg = seg_id in new_ids
            if (model.config.seg_hidden_position != "before") or (force_seg and not has_seg):
                # conventions that need one more decoder step per row go through a session of their own
                predictions.append(self.chat(loaded[row]).ask(prompt, max_new_tokens, force_seg))
                continue
            seg_states = states[[t for t, token in enumerate(new_ids) if token == seg_id]]
            masks, _, scores, _ = model.masks_from_seg_hidden(
                seg_states, sam_embeddings[row : row + 1], inputs[row].resized_size, inputs[row].original_size
            )
            predictions.append(_prediction(processor.decode(new_ids), masks, scores, new_ids, forced=False))
        return predictions


class ChatSession:
    """Several questions about one image; image features and the conversation's KV cache are kept between turns."""

    def __init__(self, segmenter: Segmenter, image):
        self.segmenter = segmenter
        self.image = load_image(image)
        self.inputs = segmenter.processor.preprocess_image(self.image)
        self._image_features = None
        self._sam_embedding = None
        self._cache = None
        self._cache_mask = None
        self._next_position = 0
        self._pending_ids: list[int] = []  # ids of the conversation not yet in the cache
        self.turns: list[tuple[str, Prediction]] = []

    # the two image encodings, computed on first use and kept
    @property
    def image_features(self) -> torch.Tensor:
        if self._image_features is None:
            with torch.no_grad():
                self._image_features = self.segmenter.model.encode_images(self.inputs.pixel_values)
        return self._image_features

    @property
    def sam_embedding(self) -> torch.Tensor:
        if self._sam_embedding is None:
            with torch.no_grad():
                self._sam_embedding = self.segmenter.model.encode_sam_images(self.inputs.sam_pixel_values)
        return self._sam_embedding

    @torch.no_grad()
    def ask(self, prompt: str, max_new_tokens: int = 512, force_seg: bool = False) -> Prediction:
        model, processor = self.segmenter.model, self.segmenter.processor
        if not isinstance(prompt, str) or not prompt.strip():
            from ..errors import InputError

            raise InputError("the prompt is empty; ask a question about the image")
        if not self.turns:
            ids = processor.encode(processor.conversation_prompt([(prompt, None)]))
        else:
            ids = self._pending_ids + processor.continuation_ids(prompt)
        embeds, mask, positions = self._embed_new_ids(ids)
        result = greedy_decode(
            model.decoder,
            model.get_output_embeddings(),
            model.get_input_embeddings(),
            embeds,
            mask,
            positions,
            max_new_tokens,
            processor.eos_token_id,
            cache=self._cache,
        )
        new_ids, states = result.new_ids[0], result.step_states[0]
        self._cache, self._cache_mask = result.cache, result.attention_mask
        self._next_position = int(result.next_positions[0])
        self._pending_ids = new_ids[-1:]

        seg_id = model.config.seg_token_id
        seg_states = self._seg_states(new_ids, states)
        forced = False
        if force_seg and seg_states.shape[0] == 0:
            seg_states, new_ids = self._force_seg(new_ids, states)
            forced = True
        eos = processor.eos_token_id
        if eos is not None and (not new_ids or new_ids[-1] != eos):
            self._pending_ids = self._pending_ids + [eos]  # close the assistant turn before the next question

        masks, _, scores, _ = model.masks_from_seg_hidden(
            seg_states, self.sam_embedding, self.inputs.resized_size, self.inputs.original_size
        )
        prediction = _prediction(processor.decode(new_ids), masks, scores, new_ids, forced)
        self.turns.append((prompt, prediction))
        return prediction

    def _embed_new_ids(self, ids: list[int]):
        """Embeddings, attention mask and positions of ids to append to the conversation (image spliced in)."""
        model = self.segmenter.model
        input_ids = torch.tensor([ids])
        spliced = model.splice_inputs(
            input_ids, torch.ones_like(input_ids), self.image_features, [0], padding_side="left"
        )
        positions = spliced.position_ids + self._next_position
        mask = spliced.attention_mask
        if self._cache_mask is not None:
            mask = torch.cat([self._cache_mask.to(mask.device), mask], dim=1)
        return spliced.inputs_embeds, mask, positions

    def _seg_states(self, new_ids: list[int], states: torch.Tensor) -> torch.Tensor:
        """Hidden states feeding each generated [SEG].

        ``"before"``: the state that predicted the [SEG], which decoding already holds. ``"at"``: the state at the
        [SEG] itself, i.e. the one that predicted the token after it; a [SEG] that ended the answer is fed once more.
        """
        model = self.segmenter.model
        seg_id = model.config.seg_token_id
        indices = [t for t, token in enumerate(new_ids) if token == seg_id]
        if not indices:
            return states.new_zeros((0, states.shape[-1]))
        if model.config.seg_hidden_position == "before":
            return states[indices]
        if indices[-1] == len(new_ids) - 1:
            extra = self._feed(new_ids[-1:])
            states = torch.cat([states, extra[-1:]], dim=0)
        return states[[t + 1 for t in indices]]

    def _force_seg(self, new_ids: list[int], states: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Append a [SEG] to an answer that has none (LISA's validation writes "[SEG]." for the model likewise)."""
        model, processor = self.segmenter.model, self.segmenter.processor
        seg_id = model.config.seg_token_id
        ended = bool(new_ids) and new_ids[-1] == processor.eos_token_id
        answer = new_ids[:-1] if ended else new_ids
        # the cache holds everything but the last generated token
        to_feed = ([] if ended else new_ids[-1:]) + [seg_id]
        fed_states = self._feed(to_feed)
        if model.config.seg_hidden_position == "before":
            state = states[-1:] if ended else fed_states[-2:-1]
        else:
            state = fed_states[-1:]
        self._pending_ids = []
        return state, answer + [seg_id]

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """Run ids through the cached decoder; returns their hidden states ``[len(ids), hidden]``."""
        model = self.segmenter.model
        embeds, mask, positions = self._embed_new_ids(ids)
        out = model.decoder(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache_mask = mask
        self._next_position += len(ids)
        self._pending_ids = []
        return out.last_hidden_state[0].float()
