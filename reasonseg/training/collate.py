"""Training samples -> model batches: conversations tokenised with LISA's label rule, both image branches, masks.

Label rule (LISA's ``collate_fn``): everything up to and including each turn's ``ASSISTANT:`` is unsupervised
(-100); the answer tokens and the closing separator (``</s>``) are supervised; padding and the image positions are
-100. It is computed by rendering the conversation up to each open assistant turn and up to each finished one,
so it holds for any template whose tokenisation of a prefix is a prefix of the whole.

A processor with a training format of its own says so with ``training_pieces`` (Sa2VA: xtuner's, where each turn's
instruction and the separator after an answer are unsupervised and the answer with its ``<|im_end|>`` supervised),
and its pieces are used instead. Images with different vision-input shapes (Sa2VA's per-image tile counts) go to
the model as a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..processing.processing_reasonseg import ReasonSegProcessor, batch_pixel_values

IGNORE_INDEX = -100


@dataclass
class TrainingSample:
    """One image and the conversations about it.

    conversations: each a list of ``(question, answer)`` turns; masks: ``[n, H, W]`` 0/1 targets, one per [SEG]
    over all answers in order (may be empty for VQA data); source: where it came from, for error messages.
    """

    image: Image.Image
    conversations: list[list[tuple[str, str]]]
    masks: np.ndarray
    source: str = ""
    extra: dict = field(default_factory=dict)


def pad_right(id_rows: list[list[int]], label_rows: list[list[int]], pad_token_id: int):
    """Right-padded ``input_ids``, ``labels`` (padding ignored) and ``attention_mask`` tensors ``[rows, longest]``."""
    longest = max(len(ids) for ids in id_rows)
    input_ids = torch.full((len(id_rows), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(id_rows), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(id_rows), longest), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(id_rows, label_rows)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return input_ids, labels, attention_mask


def encode_conversation(processor: ReasonSegProcessor, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels of a finished conversation."""
    if hasattr(processor, "training_pieces"):
        ids, labels = [], []
        for piece, supervised in processor.training_pieces(turns):
            ids.extend(piece)
            labels.extend(piece if supervised else [IGNORE_INDEX] * len(piece))
        return ids, labels
    ids = processor.encode(processor.conversation_prompt(turns))
    labels = [IGNORE_INDEX] * len(ids)
    for index in range(len(turns)):
        opened = processor.encode(processor.conversation_prompt(turns[:index] + [(turns[index][0], None)]))
        closed = processor.encode(processor.conversation_prompt(turns[: index + 1]))
        if ids[: len(closed)] != closed or closed[: len(opened)] != opened:
            raise InputError(
                f"template {processor.settings.conv_type!r} does not tokenise turn {index + 1} as a prefix of the "
                "conversation; labels cannot be placed"
            )
        labels[len(opened) : len(closed)] = closed[len(opened) :]
    return ids, labels


class ReasonSegCollator:
    """Callable for a DataLoader: a list of :class:`TrainingSample` -> keyword arguments of the model's forward."""

    def __init__(self, processor: ReasonSegProcessor, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length or processor.settings.model_max_length

    def __call__(self, samples: list[TrainingSample]) -> dict:
        processor = self.processor
        seg_id = processor.seg_token_id
        id_rows, label_rows, image_indices = [], [], []
        pixel_values, sam_pixel_values, resized, original, gt_masks = [], [], [], [], []
        for image_index, sample in enumerate(samples):
            inputs = processor.preprocess_image(sample.image)
            pixel_values.append(inputs.pixel_values)
            sam_pixel_values.append(inputs.sam_pixel_values)
            resized.append(inputs.resized_size)
            original.append(inputs.original_size)
            seg_count = 0
            for turns in sample.conversations:
                ids, labels = encode_conversation(processor, turns)
                if len(ids) > self.max_length:
                    raise InputError(
                        f"{sample.source or 'a sample'}: conversation of {len(ids)} tokens exceeds max_length "
                        f"{self.max_length}; shorten it or raise max_length"
                    )
                seg_count += ids.count(seg_id)
                id_rows.append(ids)
                label_rows.append(labels)
                image_indices.append(image_index)
            masks = np.asarray(sample.masks)
            if seg_count != len(masks):
                raise InputError(
                    f"{sample.source or 'a sample'}: {seg_count} [SEG] in the answers but {len(masks)} masks"
                )
            height, width = inputs.original_size
            gt_masks.append(torch.from_numpy(masks.reshape(len(masks), height, width) == 1).float())
        input_ids, labels, attention_mask = pad_right(id_rows, label_rows, processor.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": batch_pixel_values(pixel_values),
            "sam_pixel_values": torch.cat(sam_pixel_values),
            "image_indices": image_indices,
            "resized_sizes": resized,
            "original_sizes": original,
            "gt_masks": gt_masks,
        }
