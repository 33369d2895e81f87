"""Validation during training: gIoU / cIoU with LISA's forced-[SEG] protocol, as ``reasonseg eval --mode lisa``.

The protocol is the evaluation runner's own (:func:`reasonseg.evaluation.runner.forced_predictions` and
:func:`~reasonseg.evaluation.runner.lisa_question`): LISA's fixed question (short queries: ``What is {query} in this
image? Please output segmentation mask.``; sentences: ``{query} Please output segmentation mask.``), the answer
``[SEG].`` written in, and one forward pass whose [SEG] state gives the mask (logits > 0, then the processor's
``mask_regions`` rule). Only the first query of
each image is scored (LISA's ``ValDataset``). Scores are :mod:`reasonseg.evaluation.metrics` (gIoU = mean per-mask
IoU, cIoU = total intersection / total union, ignore pixels left out), so a validation at step k equals
``reasonseg eval --mode lisa`` on the checkpoint of step k.

Under several processes each one scores every ``world``-th item (the last round padded with repeats, so every
process runs as many forward passes -- ZeRO-3 and FSDP need that) and the counts are gathered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..evaluation.datasets import EvalItem, load_dataset, parse_data_spec
from ..evaluation.metrics import SegmentationMeter, mask_intersection_union
from ..evaluation.runner import LISA_ANSWER, forced_mask, forced_predictions, lisa_question
from ..processing.image_io import load_image


def parse_val_spec(spec: str) -> tuple[str, str]:
    """``val_data`` -> ``(kind, path)``: a plain path is a ReasonSeg folder; ``KIND:PATH`` as in evaluation."""
    head = spec.split(":", 1)[0].strip().lower()
    if ":" in spec and head.isidentifier() and not Path(spec).exists():
        return parse_data_spec(spec)
    return "reasonseg", spec


@dataclass
class ValidationSet:
    items: list[EvalItem]
    where: str
    problems: list[str]

    @classmethod
    def load(cls, spec: str, max_samples: int | None = None) -> "ValidationSet":
        kind, path = parse_val_spec(spec)
        try:
            dataset = load_dataset(kind, path)
        except InputError as err:
            raise InputError(f"val_data {spec!r}: {err}") from None
        items = dataset.items[:max_samples] if max_samples else dataset.items
        return cls(items, str(dataset.path), dataset.problems)

    def __len__(self) -> int:
        return len(self.items)


def bare_model(model):
    """The ReasonSeg model inside accelerate / DDP / peft wrappers (LoRA layers are in it, in place)."""
    while hasattr(model, "module"):  # DDP, DeepSpeed engines
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shard_indices(count: int, rank: int, world: int) -> list[tuple[int, bool]]:
    """``(item index, real)`` for every ``world``-th item from ``rank``; the last round is padded with item 0
    (``real`` False) so that every rank runs as many forward passes."""
    rounds = -(-count // world)
    return [(r * world + rank, True) if r * world + rank < count else (0, False) for r in range(rounds)]


@torch.no_grad()
def validate(model, processor, val_set: ValidationSet, accelerator=None, batch_size: int = 4) -> dict:
    """Scores ``model`` (plain, peft-wrapped or accelerate-prepared) on ``val_set``; returns
    ``{"giou", "ciou", "count", "intersection", "union"}``. The model is put back in its previous mode."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    bare = bare_model(model)
    token, placement = processor.settings.image_token, processor.settings.image_placement
    mine = shard_indices(len(val_set), rank, world)
    was_training = model.training
    model.eval()
    counts: list[tuple[int, int, int]] = []  # (item index, intersection, union) of the real items
    try:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            items = [val_set.items[index] for index, _ in chunk]
            images = [load_image(item.image_path) for item in items]
            rows = [(k, lisa_question(item.query, item.is_sentence, token, placement), LISA_ANSWER) for k, item in enumerate(items)]
            if accelerator is not None:
                with accelerator.autocast():
                    outputs = forced_predictions(bare, processor, images, rows)
            else:
                outputs = forced_predictions(bare, processor, images, rows)
            for (index, real), item, image, output in zip(chunk, items, images, outputs):
                if not real:
                    continue
                label_map = item.load_target(image.height, image.width)
                prediction = forced_mask(processor, output, label_map.shape)
                intersection, union = mask_intersection_union(prediction, label_map)
                counts.append((index, intersection, union))
    finally:
        model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        counts = gather_object(counts)
    meter = SegmentationMeter()
    for _, intersection, union in sorted(counts):
        meter.update_counts(intersection, union)
    return meter.summary()
