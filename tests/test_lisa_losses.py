"""LISA's training batches and losses on the fixture (reference weights ce 1.0, bce 2.0, dice 0.5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from reasonseg.checkpoints.lisa import load_lisa_checkpoint
from reasonseg.training.collate import ReasonSegCollator, TrainingSample


@pytest.fixture(scope="module")
def loaded(lisa_fixture):
    return load_lisa_checkpoint(lisa_fixture)


def _samples(lisa_fixture, name):
    prompts = json.loads((lisa_fixture / "inputs" / "prompts.json").read_text())
    spec = next(c for c in prompts["train_cases"] if c["name"] == name)
    samples = []
    for sample in spec["samples"]:
        image = Image.open(lisa_fixture / "inputs" / sample["image"]).convert("RGB")
        masks = np.stack([np.asarray(Image.open(lisa_fixture / "inputs" / f"mask_{m}.png")) > 0 for m in sample["gt_masks"]])
        samples.append(TrainingSample(image, [[tuple(c)] for c in sample["convs"]], masks.astype(np.uint8)))
    return samples


@pytest.mark.parametrize("case_index", [0, 1])
def test_collator_and_losses_match_the_reference(loaded, lisa_fixture, case_index):
    model, processor = loaded
    case = json.loads((lisa_fixture / "expected" / "train.json").read_text())[case_index]
    expected = np.load(lisa_fixture / "expected" / f"{case['name']}.npz")
    batch = ReasonSegCollator(processor)(_samples(lisa_fixture, case["name"]))
    assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    assert batch["labels"].tolist() == expected["labels"].tolist()
    assert batch["attention_mask"].bool().tolist() == expected["attention_masks"].astype(bool).tolist()
    assert [list(r) for r in batch["resized_sizes"]] == expected["resize"].tolist()
    model.train()
    out = model(**batch)
    np.testing.assert_allclose(out.seg_embeddings.detach().numpy(), expected["pred_embeddings"], atol=1e-5, rtol=0)
    for name in ("ce_loss", "mask_bce_loss", "mask_dice_loss", "mask_loss", "loss"):
        assert abs(float(getattr(out, name)) - case[name]) < 1e-4, name
