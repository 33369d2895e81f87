"""The bundled demo model (docs/demo_model.md) answers fixed queries about held-out scenes of the shapes world with
the right masks, and is what a command without ``--model`` loads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reasonseg.assets import BUNDLED_DEMO, default_model_path
from reasonseg.data.toy_world import generate_sample, split_seed

pytestmark = pytest.mark.skipif(
    not (BUNDLED_DEMO / "config.json").is_file(),
    reason="no trained demo model bundled under reasonseg/assets/demo_model yet (see docs/demo_model.md)",
)

# (test-split index, query family): the first single-target query of that family in that scene
FIXED_QUERIES = [(0, "attribute"), (1, "spatial"), (2, "superlative"), (3, "reasoning"), (4, "attribute")]
MIN_IOU = 0.7


def _query(index: int, family: str):
    sample = generate_sample(split_seed("test", index), families=[family])
    query = next(q for q in sample.queries if len(q.targets) == 1)
    return sample, query


@pytest.fixture(scope="module")
def demo_segmenter():
    from reasonseg.inference.segmenter import Segmenter

    return Segmenter.from_pretrained(str(BUNDLED_DEMO))


def test_default_model_is_the_bundled_demo():
    assert default_model_path() == BUNDLED_DEMO
    total = sum(f.stat().st_size for f in BUNDLED_DEMO.rglob("*") if f.is_file())
    assert total <= 50 * 2**20


@pytest.mark.parametrize("index, family", FIXED_QUERIES)
def test_fixed_query_gives_its_target(demo_segmenter, index, family):
    sample, query = _query(index, family)
    result = demo_segmenter.predict(Image.fromarray(sample.image), query.text)
    assert len(result.masks) == 1, result.text
    truth = sample.objects[query.targets[0]].mask
    predicted = np.asarray(result.masks[0]) > 0
    iou = np.logical_and(predicted, truth).sum() / np.logical_or(predicted, truth).sum()
    assert iou >= MIN_IOU, f"{query.text!r}: IoU {iou:.3f}"


def test_absent_target_gets_no_mask(demo_segmenter):
    sample = generate_sample(split_seed("test", 5), families=["no_target"])
    query = sample.queries[0]
    result = demo_segmenter.predict(Image.fromarray(sample.image), query.text)
    assert result.masks == [], result.text
