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
from ..errors import InputError
from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
from ..processing.image_io import load_image
from ..processing.mask_regions import check_mask_regions
from ..processing.processing_reasonseg import ReasonSegProcessor
from .generation import decoder_step, first_row_position, greedy_decode

FORCED_NOTE = "(no [SEG] in the answer; mask forced)"


@dataclass
class Prediction:
    """text: the answer (no image placeholder, no special tokens); masks: one ``HxW`` bool array per [SEG] at the
    input image's size (the logits above 0, after the processor's ``mask_regions`` rule); mask_logits: the float32
    logits before thresholding at 0; scores: SAM's predicted IoU per
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


def _prediction(processor, text: str, masks: torch.Tensor, scores: torch.Tensor, token_ids: list[int],
                forced: bool) -> Prediction:
    logits = [m.float().cpu().numpy() for m in masks]
    if forced:
        text = f"{text} {FORCED_NOTE}".strip()
    return Prediction(
        text=text,
        masks=[processor.post_process_mask(m > 0) for m in logits],
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
        mask_regions: str | None = None,
    ) -> "Segmenter":
        """Load a reasonseg or original LISA checkpoint (local directory or hub id); None = the bundled demo.

        ``mask_regions`` overrides the checkpoint's own rule for what is kept of each mask: ``"all"`` its regions,
        or the ``"largest"`` (see :mod:`reasonseg.processing.mask_regions`)."""
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
        if mask_regions is not None:
            processor.settings.mask_regions = check_mask_regions(mask_regions)
        return cls(model, processor)

    def chat(self, image) -> "ChatSession":
        """Start a conversation about one image (path, PIL image or HxWx3 uint8 array)."""
        return ChatSession(self, image)

    def predict(self, image, prompt: str, max_new_tokens: int = 512, force_seg: bool = False) -> Prediction:
        """Answer one question about one image."""
        return self.chat(image).ask(prompt, max_new_tokens=max_new_tokens, force_seg=force_seg)

    @torch.no_grad()
    def predict_batch(
        self,
        images: list,
        prompts,
        batch_size: int = 8,
        max_new_tokens: int = 512,
        force_seg: bool | list[bool] = False,
    ) -> list:
        """Answer questions about many images, ``batch_size`` (image, prompt) pairs per forward pass.

        ``prompts`` is one string asked of every image, or one entry per image: a string, or a list of strings
        (several questions about that image; its vision and SAM encodings are computed once and shared).
        ``force_seg`` is one flag or one per image. Returns one :class:`Prediction` per image, or, for an image
        given a list of prompts, a list of them in prompt order.

        Up to ``batch_size`` images go through the vision tower and SAM's encoder in one call; their prompts are
        left-padded and decoded together (an image with more than ``batch_size`` prompts is decoded in several
        groups). The results equal :meth:`predict` one pair at a time: the same tokens, masks and forced [SEG]s,
        logits equal to float rounding.
        """
        images = list(images)
        prompt_lists, listed = _prompt_lists(images, prompts)
        forces = _force_flags(images, force_seg)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a whole number >= 1, not {max_new_tokens!r}")
        results: list[list[Prediction]] = []
        for chunk in _image_chunks(prompt_lists, batch_size):
            loaded = [load_image(images[i]) for i in chunk]
            results.extend(
                self._predict_images(loaded, [prompt_lists[i] for i in chunk], [forces[i] for i in chunk],
                                     batch_size, max_new_tokens)
            )
        return [result if is_list else result[0] for result, is_list in zip(results, listed)]

    def _predict_images(self, loaded, prompt_lists, forces, batch_size, max_new_tokens) -> list[list[Prediction]]:
        """Encode the images once, then decode every (image, prompt) row in groups of ``batch_size``."""
        model, processor = self.model, self.processor
        inputs = [processor.preprocess_image(image) for image in loaded]
        pixel_values = [i.pixel_values for i in inputs]
        if len({tuple(p.shape) for p in pixel_values}) == 1:
            features = model.encode_images(torch.cat(pixel_values))
        else:  # inputs of different shapes (Sa2VA: a different number of tiles per image), one image at a time
            features = [model.encode_images(p)[0] for p in pixel_values]
        sam_embeddings = model.encode_sam_images(torch.cat([i.sam_pixel_values for i in inputs]))
        rows = [(image, prompt) for image, prompts in enumerate(prompt_lists) for prompt in prompts]
        found: list[Prediction] = []
        for start in range(0, len(rows), batch_size):
            group = rows[start : start + batch_size]
            found.extend(self._decode_rows(group, features, sam_embeddings, inputs, forces, max_new_tokens))
        out: list[list[Prediction]] = [[] for _ in prompt_lists]
        for (image, _), prediction in zip(rows, found):
            out[image].append(prediction)
        return out

    def _decode_rows(self, rows, features, sam_embeddings, inputs, forces, max_new_tokens) -> list[Prediction]:
        model, processor = self.model, self.processor
        id_lists = [processor.encode(processor.conversation_prompt([(prompt, None)])) for _, prompt in rows]
        longest = max(len(ids) for ids in id_lists)
        input_ids = torch.full((len(rows), longest), processor.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for row, ids in enumerate(id_lists):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids)
            attention[row, longest - len(ids) :] = 1
        image_rows = [image for image, _ in rows]
        spliced = model.splice_inputs(input_ids, attention, features, image_rows, padding_side="left")
        result = greedy_decode(
            model.decoder,
            model.get_output_embeddings(),
            model.get_input_embeddings(),
            spliced.inputs_embeds,
            spliced.attention_mask,
            spliced.position_ids,
            max_new_tokens,
            processor.stop_token_ids,
            prefill_kwargs=spliced.decoder_kwargs,
            image_positions=model.attending_image_positions(spliced),
        )
        plans = [self._seg_plan(result.new_ids[r], forces[image]) for r, (image, _) in enumerate(rows)]
        fed = self._feed_rows(result, spliced, plans)
        predictions = []
        for row, (image, _) in enumerate(rows):
            plan, states = plans[row], result.step_states[row]
            if plan.fed:
                states = torch.cat([states, fed[row]], dim=0)
            seg_states = states[plan.state_rows] if plan.state_rows else states.new_zeros((0, states.shape[-1]))
            masks, _, scores, _ = model.masks_from_seg_hidden(
                seg_states, sam_embeddings[image : image + 1], inputs[image].resized_size, inputs[image].original_size
            )
            predictions.append(_prediction(processor, processor.decode(plan.ids), masks, scores, plan.ids, plan.forced))
        return predictions

    def _seg_plan(self, new_ids: list[int], force: bool) -> "_SegPlan":
        """Which hidden states feed each [SEG] of one decoded row, and what must still be fed to get them.

        Mirrors :meth:`ChatSession._seg_states` and :meth:`ChatSession._force_seg`. ``state_rows`` index the row's
        step states followed by the states of ``fed`` (fed at the position of the answer's last token, which the
        cache does not hold yet).
        """
        seg_id, stops = self.model.config.seg_token_id, self.processor.stop_token_ids
        before = self.model.config.seg_hidden_position == "before"
        steps = len(new_ids)
        indices = [t for t, token in enumerate(new_ids) if token == seg_id]
        if indices:
            if before:
                return _SegPlan(new_ids, indices)
            if indices[-1] == steps - 1:  # "at": a [SEG] that ended the answer is fed once more
                return _SegPlan(new_ids, [t + 1 for t in indices], fed=[seg_id])
            return _SegPlan(new_ids, [t + 1 for t in indices])
        if not force:
            return _SegPlan(new_ids, [])
        ended = steps > 0 and new_ids[-1] in stops
        answer = new_ids[:-1] if ended else new_ids
        to_feed = ([] if ended else new_ids[-1:]) + [seg_id]
        if before and ended:  # the state that predicted the stop token predicts the [SEG] that replaces it
            return _SegPlan(answer + [seg_id], [steps - 1], forced=True)
        if before:
            return _SegPlan(answer + [seg_id], [steps], fed=to_feed, forced=True)
        return _SegPlan(answer + [seg_id], [steps + len(to_feed) - 1], fed=to_feed, forced=True)

    def _feed_rows(self, result, spliced, plans) -> list[torch.Tensor | None]:
        """One more decoder call over the batch's cache for the rows whose plan feeds tokens; their states.

        Row ``r`` continues from its own answer: cache columns after its answer's second-to-last token (tokens
        decoded for the batch after the row had finished) are masked out, and its tokens are fed, left-padded, at
        the position of the answer's last token, as a chat session of that row alone would feed them.
        """
        width = max(len(plan.fed) for plan in plans)
        if width == 0:
            return [None] * len(plans)
        model = self.model
        device = result.attention_mask.device
        prompt_length = spliced.attention_mask.shape[1]
        # positions may carry leading axes (M-RoPE: [3, B, T]); every axis advances alike after text
        first_positions = spliced.position_ids[..., -1] + 1
        cache_mask = result.attention_mask.clone()
        feed_ids = torch.full((len(plans), width), self.processor.pad_token_id, dtype=torch.long, device=device)
        feed_mask = torch.zeros((len(plans), width), dtype=cache_mask.dtype, device=device)
        positions = torch.zeros((*spliced.position_ids.shape[:-2], len(plans), width),
                                dtype=spliced.position_ids.dtype, device=device)
        for row, plan in enumerate(plans):
            if not plan.fed:
                continue
            steps = len(result.new_ids[row])
            cache_mask[row, prompt_length + steps - 1 :] = 0
            count = len(plan.fed)
            feed_ids[row, width - count :] = torch.tensor(plan.fed, device=device)
            feed_mask[row, width - count :] = 1
            start = (first_positions[..., row] + steps - 1).unsqueeze(-1)
            positions[..., row, :] = start
            positions[..., row, width - count :] = start + torch.arange(count, device=device)
        embeds = model.get_input_embeddings()(feed_ids).to(spliced.inputs_embeds.dtype)
        hidden = decoder_step(model.decoder, embeds, torch.cat([cache_mask, feed_mask], dim=1), positions,
                              result.cache).float()
        return [hidden[row, width - len(plan.fed) :] if plan.fed else None for row, plan in enumerate(plans)]


@dataclass
class _SegPlan:
    ids: list[int]  # the answer's ids (with an appended [SEG] when forced)
    state_rows: list[int]  # rows of (step states + fed states) that feed each [SEG]
    fed: list[int] = field(default_factory=list)  # ids still to feed after the answer's second-to-last token
    forced: bool = False


def _prompt_lists(images: list, prompts) -> tuple[list[list[str]], list[bool]]:
    """``prompts`` as one list of prompts per image, and whether each image was given a list."""
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    prompts = list(prompts)
    if len(prompts) != len(images):
        raise InputError(f"{len(images)} images but {len(prompts)} prompts; give one prompt or one per image")
    lists, listed = [], []
    for index, entry in enumerate(prompts):
        is_list = isinstance(entry, (list, tuple))
        entry = list(entry) if is_list else [entry]
        if not entry:
            raise InputError(f"image {index} has an empty list of prompts; give at least one question per image")
        for prompt in entry:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError(f"prompt {prompt!r} for image {index} is empty; ask a question about the image")
        lists.append(entry)
        listed.append(is_list)
    return lists, listed


def _force_flags(images: list, force_seg) -> list[bool]:
    if isinstance(force_seg, (bool, np.bool_)):
        return [bool(force_seg)] * len(images)
    flags = list(force_seg)
    if len(flags) != len(images) or not all(isinstance(f, (bool, np.bool_)) for f in flags):
        raise InputError(f"force_seg must be True/False or one True/False per image ({len(images)} images)")
    return [bool(f) for f in flags]


def _image_chunks(prompt_lists: list[list[str]], batch_size: int) -> list[list[int]]:
    """Consecutive images whose prompts together fit in ``batch_size`` rows (an image with more gets a chunk alone)."""
    chunks: list[list[int]] = []
    rows = 0
    for index, prompts in enumerate(prompt_lists):
        if chunks and rows + len(prompts) <= batch_size:
            chunks[-1].append(index)
            rows += len(prompts)
        else:
            chunks.append([index])
            rows = len(prompts)
    return chunks


class ChatSession:
    """Several questions about one image; image features and the conversation's KV cache are kept between turns."""

    def __init__(self, segmenter: Segmenter, image):
        self.segmenter = segmenter
        self.image = load_image(image)
        self.inputs = segmenter.processor.preprocess_image(self.image)
        self._image_features = None
        self._sam_embedding = None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (its turns and KV cache); the image's two encodings are kept."""
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
            raise InputError("the prompt is empty; ask a question about the image")
        if not self.turns:
            ids = processor.encode(processor.conversation_prompt([(prompt, None)]))
        else:
            ids = self._pending_ids + processor.continuation_ids(prompt)
        embeds, mask, positions, extra, image_positions = self._embed_new_ids(ids)
        result = greedy_decode(
            model.decoder,
            model.get_output_embeddings(),
            model.get_input_embeddings(),
            embeds,
            mask,
            positions,
            max_new_tokens,
            processor.stop_token_ids,
            cache=self._cache,
            prefill_kwargs=extra,
            image_positions=image_positions,
        )
        new_ids, states = result.new_ids[0], result.step_states[0]
        self._cache, self._cache_mask = result.cache, result.attention_mask
        self._next_position = first_row_position(result.next_positions)
        self._pending_ids = new_ids[-1:]

        seg_states = self._seg_states(new_ids, states)
        forced = False
        if force_seg and seg_states.shape[0] == 0:
            seg_states, new_ids = self._force_seg(new_ids, states)
            forced = True
        eos = processor.eos_token_id
        if eos is not None and (not new_ids or new_ids[-1] != eos):
            # close the assistant turn before the next question; an answer that stopped at another stop token
            # (Sa2VA's <|endoftext|>, not in the cache yet) is closed with the turn's end token in its place
            if new_ids and new_ids[-1] in processor.stop_token_ids and self._pending_ids == new_ids[-1:]:
                self._pending_ids = []
            self._pending_ids = self._pending_ids + [eos]

        masks, _, scores, _ = model.masks_from_seg_hidden(
            seg_states, self.sam_embedding, self.inputs.resized_size, self.inputs.original_size
        )
        prediction = _prediction(processor, processor.decode(new_ids), masks, scores, new_ids, forced)
        self.turns.append((prompt, prediction))
        return prediction

    def _embed_new_ids(self, ids: list[int]):
        """Embeddings, attention mask, positions, further decoder inputs (``SplicedInputs.decoder_kwargs``) and the
        positions that attend both ways (or ``None``) of ids to append to the conversation (image spliced in)."""
        model = self.segmenter.model
        input_ids = torch.tensor([ids])
        spliced = model.splice_inputs(
            input_ids, torch.ones_like(input_ids), self.image_features, [0], padding_side="left"
        )
        positions = spliced.position_ids + self._next_position
        mask = spliced.attention_mask
        if self._cache_mask is not None:
            mask = torch.cat([self._cache_mask.to(mask.device), mask], dim=1)
        return spliced.inputs_embeds, mask, positions, spliced.decoder_kwargs, model.attending_image_positions(spliced)

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
        ended = bool(new_ids) and new_ids[-1] in processor.stop_token_ids
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
        embeds, mask, positions, extra, _ = self._embed_new_ids(ids)  # text only: causal
        hidden = decoder_step(model.decoder, embeds, mask, positions, self._cache, extra)
        self._cache_mask = mask
        self._next_position += len(ids)
        self._pending_ids = []
        return hidden[0].float()
