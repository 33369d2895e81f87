"""The bundled demo model (reasonseg/assets/demo_model, docs/demo_model.md) is what a command without ``--model``
loads, and still scores on the shapes world what its model card says: single-target queries it must answer with
[SEG] itself, absent objects it must answer without a mask, and the query of `make demo`.

The issue's acceptance (a handful of fixed held-out queries, IoU >= 0.7 each) is strict once the bundled model's
recorded held-out figures (eval_metrics.json beside it) reach gIoU and cIoU 0.80 and FIXED_QUERIES_MET says the
queries have been seen to pass; until then it is an expected failure, so CI shows how many of those queries the
current model already gets. Session 32's bundle (session 30's weights, each mask's largest region kept) reaches both
figures (0.835 / 0.828 on the test split) yet passes 3 of the 5 queries, so the acceptance is not met and issue 12 stays open (docs/demo_model.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasonseg.assets import BUNDLED_DEMO, default_model_path
from reasonseg.data.toy_world import generate_sample, split_seed
from reasonseg.evaluation.metrics import first_mask_iou

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (BUNDLED_DEMO / "config.json").is_file(),
    reason="no demo model bundled under reasonseg/assets/demo_model (see docs/demo_model.md)",
)

TARGET = 0.80  # held-out generate-mode gIoU and cIoU the demo model is meant to reach
MIN_IOU = 0.7
# (test-split index, query family): the first single-target query of that family in that scene
FIXED_QUERIES = [(0, "attribute"), (1, "spatial"), (2, "superlative"), (3, "reasoning"), (4, "attribute")]
MARKING_FAMILIES = ["attribute", "spatial", "superlative", "reasoning"]


def _recorded_scores() -> dict:
    path = BUNDLED_DEMO / "eval_metrics.json"
    if not path.is_file():
        return {"giou": 0.0, "ciou": 0.0}
    return json.loads(path.read_text())["results"]["generate"]["protocol"]["overall"]


MEETS_TARGETS = min(_recorded_scores()[k] for k in ("giou", "ciou")) >= TARGET
# set to True by the session whose bundled model passes every fixed query (then the test is strict)
FIXED_QUERIES_MET = False


@pytest.fixture(scope="module")
def demo_segmenter():
    from reasonseg.inference.segmenter import Segmenter

    return Segmenter.from_pretrained(None)  # what a command without --model loads


def test_default_model_is_the_bundled_demo(capsys):
    assert default_model_path() == BUNDLED_DEMO
    assert "bundled demo model" in capsys.readouterr().err
    total = sum(f.stat().st_size for f in BUNDLED_DEMO.rglob("*") if f.is_file())
    assert total <= 50 * 2**20


def test_single_targets_are_segmented_from_the_models_own_seg(demo_segmenter):
    """Generate mode (the model must say [SEG] itself) on the first single-target query of one family per val scene,
    the families in turn; a query answered without [SEG] counts as IoU 0."""
    images, prompts, truths = [], [], []
    for index in range(32):
        sample = generate_sample(split_seed("val", index), families=[MARKING_FAMILIES[index % 4]])
        query = next((q for q in sample.queries if len(q.targets) == 1), None)
        if query is not None:
            images.append(Image.fromarray(sample.image))
            prompts.append(query.text)
            truths.append(sample.objects[query.targets[0]].mask)
    results = demo_segmenter.predict_batch(images, prompts, max_new_tokens=48)
    ious = [first_mask_iou(result.masks, truth) for result, truth in zip(results, truths)]
    assert len(ious) == 27
    assert np.mean(ious) >= 0.45, np.round(ious, 2)  # measured 0.828 (session 30's model; session 29's: 0.838; 27 queries, so noisy)


def test_absent_targets_get_no_mask(demo_segmenter):
    images, prompts = [], []
    for index in range(32):
        sample = generate_sample(split_seed("val", index), families=["no_target"])
        images.append(Image.fromarray(sample.image))
        prompts.append(sample.queries[0].text)
    results = demo_segmenter.predict_batch(images, prompts, max_new_tokens=48)
    without = [result.text for result in results if not result.masks]
    assert len(without) >= 27, [result.text for result in results if result.masks]  # measured 32 of 32 (session 30's model; session 29's: 32)
    assert all("no " in text.lower() or "n't" in text.lower() for text in without), without


def test_make_demo_query_segments_the_circle(demo_segmenter):
    """The query `make demo` asks of examples/shapes.png (a red circle, a blue square, a yellow triangle)."""
    image = np.asarray(Image.open(ROOT / "examples" / "shapes.png").convert("RGB"))
    result = demo_segmenter.predict(image, "Which shape has no corners? Please output segmentation mask.")
    assert len(result.masks) == 1 and "circle" in result.text, result.text
    red = (image[..., 0] > 180) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert first_mask_iou(result.masks, red) >= 0.85  # measured 0.987 (session 30's model; session 29's: 0.987)


def test_the_fixed_query_rule_beyond_the_five_stays_where_it_was_measured(demo_segmenter):
    """A regression guard, not the acceptance: the first 40 queries of the acceptance rule
    (benchmarks/demo_fixed_queries.py), of which the bundled model passes 31 at IoU >= 0.7 (session 32; 27 with every
    mask region kept, so dropping its mask_regions rule fails here). Two may flip with another platform's numerics."""
    from .test_demo_benchmarks import _load_benchmark

    queries = _load_benchmark("demo_fixed_queries").fixed_queries(40)
    results = demo_segmenter.predict_batch([Image.fromarray(q.image) for q in queries], [q.text for q in queries],
                                           max_new_tokens=48)
    ious = [first_mask_iou(result.masks, q.truth) for result, q in zip(results, queries)]
    assert sum(iou >= MIN_IOU for iou in ious) >= 29, np.round(ious, 2)


@pytest.mark.xfail(not (MEETS_TARGETS and FIXED_QUERIES_MET), strict=False,
                   reason=f"issue 12 is open: the bundled model does not yet give every fixed held-out query IoU >= "
                          f"{MIN_IOU} (docs/demo_model.md)")
@pytest.mark.parametrize("index, family", FIXED_QUERIES)
def test_fixed_held_out_query_gives_its_target(demo_segmenter, index, family):
    sample = generate_sample(split_seed("test", index), families=[family])
    query = next(q for q in sample.queries if len(q.targets) == 1)
    result = demo_segmenter.predict(Image.fromarray(sample.image), query.text)
    assert len(result.masks) == 1, result.text
    iou = first_mask_iou(result.masks, sample.objects[query.targets[0]].mask)
    assert iou >= MIN_IOU, f"{query.text!r}: IoU {iou:.3f}"


def test_eval_without_a_model_says_how_to_judge_the_demo_model(tmp_path, capsys):
    from reasonseg.cli.main import main

    from .test_eval_runner import write_reasonseg

    folder = write_reasonseg(tmp_path / "rs", count=1, queries=1)
    for mode, noted in (("both", True), ("generate", False)):
        assert main(["eval", "--data", f"reasonseg:{folder}", "--mode", mode, "--no-progress",
                     "--max-new-tokens", "8", "--out", str(tmp_path / mode)]) == 0
        assert ("judge it with --mode generate" in capsys.readouterr().err) == noted
