"""How many fixed held-out queries does a demo model answer with a mask of IoU >= 0.7? (Seconds, not minutes.)

    python benchmarks/demo_fixed_queries.py reasonseg/assets/demo_model
    python benchmarks/demo_fixed_queries.py runs/demo/avg456 --count 20

The rule is issue 12's acceptance test's (tests/test_demo_model.py, FIXED_QUERIES): test scene i, family
attribute / spatial / superlative / reasoning in turn (i mod 4), its first single-target query; scenes without one
are skipped. The first five are the test's five. Each query is answered in generate mode (the model must say [SEG]
itself; no mask counts as IoU 0) and the first mask is scored against the target. A model that passes the five is
the one whose bundling may set FIXED_QUERIES_MET; the larger counts say how typical those five are.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from PIL import Image

from reasonseg.data.toy_world import generate_sample, split_seed
from reasonseg.errors import ReasonSegError
from reasonseg.evaluation.metrics import first_mask_iou

FAMILIES_IN_TURN = ("attribute", "spatial", "superlative", "reasoning")
MIN_IOU = 0.7


@dataclass
class FixedQuery:
    index: int
    family: str
    text: str
    image: np.ndarray
    truth: np.ndarray


def fixed_queries(count: int) -> list[FixedQuery]:
    queries, index = [], -1
    while len(queries) < count:
        index += 1
        family = FAMILIES_IN_TURN[index % len(FAMILIES_IN_TURN)]
        sample = generate_sample(split_seed("test", index), families=[family])
        query = next((q for q in sample.queries if len(q.targets) == 1), None)
        if query is not None:
            queries.append(FixedQuery(index, family, query.text, sample.image, sample.objects[query.targets[0]].mask))
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a demo-world model directory")
    parser.add_argument("--count", type=int, default=5, help="how many fixed queries (the first 5 are the test's)")
    args = parser.parse_args()

    from reasonseg.inference.segmenter import Segmenter

    try:
        segmenter = Segmenter.from_pretrained(args.model)
    except ReasonSegError as err:
        parser.error(str(err))
    queries = fixed_queries(args.count)
    predictions = segmenter.predict_batch([Image.fromarray(q.image) for q in queries], [q.text for q in queries],
                                          max_new_tokens=48)
    passed = 0
    for query, prediction in zip(queries, predictions):
        iou = first_mask_iou(prediction.masks, query.truth)
        passed += iou >= MIN_IOU
        print(f"scene {query.index:3d} {query.family:12s} IoU {iou:.3f}  {query.text!r} -> {prediction.text!r}")
    print(f"IoU >= {MIN_IOU}: {passed} of {len(queries)}")


if __name__ == "__main__":
    main()
