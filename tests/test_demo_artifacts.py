"""The committed stage outputs of the demo model (artifacts/demo, see its README) load with the classes `reasonseg
build` uses and still score what docs/demo_model.md reports, so a later phase can start from them. The stage-3
model they make is bundled as reasonseg/assets/demo_model (tests/test_demo_model.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast, SamModel

from reasonseg.training.sam_pretrain import evaluate_sam, load_sam_pretrain_config
from reasonseg.training.vlm_pretrain import build_image_processor, evaluate_vlm, load_vlm_pretrain_config

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "demo"
SCENES = 8  # val scenes 0-7; the scores below were measured on the same scenes, less a margin for other CPUs

pytestmark = pytest.mark.skipif(not (ARTIFACTS / "toy_sam" / "config.json").is_file(),
                                reason="no committed stage outputs under artifacts/demo")


def test_toy_sam_segments_each_object_from_its_point_and_its_box():
    config = load_sam_pretrain_config(ARTIFACTS / "toy_sam" / "training_config.yaml")
    scores = evaluate_sam(SamModel.from_pretrained(ARTIFACTS / "toy_sam"), config, SCENES)
    # measured 0.878 / 0.828 (session 20's wide encoder; session 14's phase: 0.839 / 0.786; session 9's: 0.824 / 0.750)
    assert scores["point_miou"] >= 0.85, scores
    assert scores["box_miou"] >= 0.80, scores


def test_toy_llava_answers_val_conversations():
    folder = ARTIFACTS / "toy_llava"
    # the val turns are drawn with the config's seed; each phase has its own, so score every phase on seed 0's turns
    config = dataclasses.replace(load_vlm_pretrain_config(folder / "training_config.yaml"), seed=0)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    scores = evaluate_vlm(model, tokenizer, build_image_processor(config), config, SCENES)
    assert scores["val_token_accuracy"] >= 0.94, scores  # measured 0.976 (session 25's second phase on seed 0's turns; session 22's focus phase, its val turns: 0.976; session 17's list phase: 0.952; session 16's phase: 0.990)
