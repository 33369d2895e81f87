"""Which ``mask_regions`` rule suits a demo-world model? Both rules scored on validation scenes from one set of answers.

    python benchmarks/demo_mask_regions.py reasonseg/assets/demo_model [--scenes 200]

The choice nnU-Net makes for its "keep the largest component" post-processing, made on data that no test split
shares: every single-target query of the attribute, spatial, superlative and reasoning families in the first
``--scenes`` validation scenes (``split_seed("val", i)``) is answered once in generate mode (the model must say
[SEG] itself; no mask counts as IoU 0), and the first mask is scored after each rule of
:mod:`reasonseg.processing.mask_regions`. Printed per rule: gIoU, cIoU and the share of queries at IoU >= 0.7.
Session 32 chose ``largest`` for the bundled model with this count of 200 (723 queries): docs/demo_model.md.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from reasonseg.data.toy_world import generate_sample, split_seed
from reasonseg.errors import ReasonSegError
from reasonseg.evaluation.metrics import iou_from, mask_intersection_union
from reasonseg.processing.mask_regions import MASK_REGION_RULES, apply_mask_regions

FAMILIES = ("attribute", "spatial", "superlative", "reasoning")
MIN_IOU = 0.7


def validation_queries(scenes: int):
    """``(image, query text, target mask)`` for every single-target query of the first ``scenes`` val scenes."""
    for index in range(scenes):
        sample = generate_sample(split_seed("val", index), families=list(FAMILIES))
        for query in sample.queries:
            if len(query.targets) == 1:
                yield sample.image, query.text, sample.objects[query.targets[0]].mask


def score(predictions, truths, rule: str) -> tuple[float, float, float]:
    """gIoU, cIoU and the share at IoU >= MIN_IOU of the first mask of each prediction after ``rule``."""
    intersection = union = 0
    ious = []
    for prediction, truth in zip(predictions, truths):
        raw = prediction.mask_logits[0] > 0 if prediction.mask_logits else np.zeros_like(truth, dtype=bool)
        inter, uni = mask_intersection_union(apply_mask_regions(raw, rule), truth)
        intersection, union = intersection + inter, union + uni
        ious.append(iou_from(inter, uni))
    ious = np.asarray(ious)
    return float(ious.mean()), intersection / max(union, 1), float((ious >= MIN_IOU).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a demo-world model directory")
    parser.add_argument("--scenes", type=int, default=200, help="validation scenes to ask about (default 200)")
    args = parser.parse_args()

    from reasonseg.inference.segmenter import Segmenter

    try:
        segmenter = Segmenter.from_pretrained(args.model)
    except ReasonSegError as err:
        parser.error(str(err))
    images, texts, truths = zip(*validation_queries(args.scenes))
    predictions = segmenter.predict_batch([Image.fromarray(i) for i in images], list(texts), max_new_tokens=48)
    print(f"{len(truths)} single-target queries of {args.scenes} val scenes (the model's own rule: "
          f"{segmenter.processor.settings.mask_regions})")
    for rule in MASK_REGION_RULES:
        giou, ciou, passed = score(predictions, truths, rule)
        print(f"mask_regions {rule:8s} gIoU {giou:.4f}  cIoU {ciou:.4f}  IoU >= {MIN_IOU}: {passed:.1%}")


if __name__ == "__main__":
    main()
