"""The processor's ``mask_regions`` rule: every region of a mask (LISA), or only the largest, in predictions and in
both evaluation modes, saved with the checkpoint and overridable at load time."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from reasonseg import Segmenter
from reasonseg.cli.main import main
from reasonseg.errors import InputError
from reasonseg.evaluation import evaluate
from reasonseg.inference.mask_io import rle_to_mask
from reasonseg.processing.mask_regions import apply_mask_regions, largest_region
from reasonseg.processing.processing_reasonseg import ReasonSegProcessor

from .conftest import script_answers
from .test_eval_runner import seg_happy, write_reasonseg


def region_count(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def test_largest_region_keeps_the_biggest_8_connected_region():
    mask = np.zeros((8, 10), dtype=bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[4:7, 5:8] = True  # 9 px ...
    mask[7, 8] = True  # ... plus a diagonal neighbour: 10 px in one region
    mask[0, 9] = True  # 1 px
    kept = largest_region(mask)
    expected = np.zeros_like(mask)
    expected[4:7, 5:8] = True
    expected[7, 8] = True
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(apply_mask_regions(mask, "all"), mask)
    np.testing.assert_array_equal(apply_mask_regions(mask, "largest"), expected)
    empty = np.zeros((4, 4), dtype=bool)
    assert not largest_region(empty).any()
    with pytest.raises(InputError, match="mask_regions must be one of all, largest, not 'biggest'"):
        apply_mask_regions(mask, "biggest")


def test_rule_is_saved_with_the_processor_and_checked_on_load(tiny, tmp_path):
    _, processor = tiny
    assert processor.settings.mask_regions == "all"  # LISA's behaviour unless a checkpoint says otherwise
    processor.settings.mask_regions = "largest"
    processor.save_pretrained(tmp_path)
    assert ReasonSegProcessor.from_pretrained(tmp_path).settings.mask_regions == "largest"
    saved = json.loads((tmp_path / "reasonseg_processor.json").read_text())
    saved["mask_regions"] = "biggest"
    (tmp_path / "reasonseg_processor.json").write_text(json.dumps(saved))
    expected = r"reasonseg_processor.json: mask_regions must be one of all, largest, not 'biggest'"
    with pytest.raises(InputError, match=expected):
        ReasonSegProcessor.from_pretrained(tmp_path)


@pytest.fixture()
def saved_tiny(tiny, tmp_path):
    """A tiny random checkpoint that emits [SEG]s, on disk (mask_regions: "all")."""
    model, processor = tiny
    seg_happy(model, processor)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_predictions_keep_the_largest_region_only_when_asked(saved_tiny, rgb_image):
    plain = Segmenter.from_pretrained(saved_tiny, device="cpu")
    largest = Segmenter.from_pretrained(saved_tiny, device="cpu", mask_regions="largest")
    assert largest.processor.settings.mask_regions == "largest"
    seg, eos = plain.processor.seg_token_id, plain.processor.eos_token_id
    for segmenter in (plain, largest):
        script_answers(segmenter.model, segmenter.processor, [seg, eos])
    every, one = plain.predict(rgb_image, "the shape"), largest.predict(rgb_image, "the shape")
    assert len(every.masks) == len(one.masks) == 1
    np.testing.assert_array_equal(every.mask_logits[0], one.mask_logits[0])  # logits are left as they are
    np.testing.assert_array_equal(every.masks[0], every.mask_logits[0] > 0)
    assert region_count(every.masks[0]) > 1  # a random model's mask is scattered, so the rule has work to do
    assert region_count(one.masks[0]) == 1
    np.testing.assert_array_equal(one.masks[0], largest_region(every.masks[0]))
    with pytest.raises(InputError, match="mask_regions must be one of"):
        Segmenter.from_pretrained(saved_tiny, device="cpu", mask_regions="most")


def test_eval_applies_the_rule_in_both_modes_and_keeps_runs_apart(saved_tiny, tmp_path, capsys):
    spec = f"reasonseg:{write_reasonseg(tmp_path / 'rs', count=3, queries=1)}"
    runs = {}
    for rule in ("all", "largest"):
        segmenter = Segmenter.from_pretrained(saved_tiny, device="cpu", mask_regions=rule)
        runs[rule] = evaluate(segmenter, spec, mode="both", max_new_tokens=4, out_dir=tmp_path / rule)
        assert json.loads((tmp_path / rule / "run.json").read_text())["mask_regions"] == rule
        assert runs[rule].metrics["settings"]["mask_regions"] == rule
        assert ("each mask's largest region only" in runs[rule].table.splitlines()[0]) == (rule == "largest")
    masks = {rule: [rle_to_mask(r["pred_rle"]) for r in runs[rule].records] for rule in runs}
    forced_one_seg = [i for i, r in enumerate(runs["all"].records) if r["mode"] == "lisa"]
    assert forced_one_seg and any(region_count(masks["all"][i]) > 1 for i in forced_one_seg)
    for i in forced_one_seg:  # one forced [SEG] per item: the largest region of the plain mask
        np.testing.assert_array_equal(masks["largest"][i], largest_region(masks["all"][i]))
    generated = [i for i, r in enumerate(runs["all"].records) if r["mode"] == "generate" and r["seg_count"]]
    assert generated
    for i in generated:  # the union of each [SEG]'s largest region: inside the plain union, one region per [SEG]
        seg_count = runs["largest"].records[i]["seg_count"]
        assert not (masks["largest"][i] & ~masks["all"][i]).any()
        assert 1 <= region_count(masks["largest"][i]) <= seg_count < region_count(masks["all"][i])
    assert runs["largest"].metrics["results"] != runs["all"].metrics["results"]

    # a folder scored with one rule is not resumed with the other
    segmenter = Segmenter.from_pretrained(saved_tiny, device="cpu", mask_regions="largest")
    with pytest.raises(InputError, match="mask_regions: 'all', now 'largest'"):
        evaluate(segmenter, spec, mode="both", max_new_tokens=4, out_dir=tmp_path / "all")

    # the command line: a bad choice is one usage error, the flag reaches the segmenter
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(saved_tiny), "--image", "x.png", "--prompt", "p", "--mask-regions", "most"])
    assert "invalid choice: 'most'" in capsys.readouterr().err
    image = tmp_path / "in.png"
    Image.fromarray((np.random.RandomState(1).rand(40, 50, 3) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "cli"
    code = main(["predict", "--model", str(saved_tiny), "--image", str(image), "--prompt", "the shape",
                 "--mask-regions", "largest", "--max-new-tokens", "4", "--out", str(out), "--force-seg"])
    assert code == 0
    written = sorted(out.glob("*mask*.png"))
    assert written and all(region_count(np.array(Image.open(p)) > 0) <= 1 for p in written)
