"""Training on a tiny model: loss falls, kill-and-resume equals an uninterrupted run, export merges LoRA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reasonseg import Segmenter
from reasonseg.errors import InputError
from reasonseg.training.config import load_training_config
from reasonseg.training.export import export_run
from reasonseg.training.trainer import STATE_FILE, train


@pytest.fixture()
def workspace(tmp_path, tiny):
    model, processor = tiny
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    rng = np.random.RandomState(0)
    lines = []
    for index in range(3):
        image = np.full((48, 64, 3), 200, np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        y, x = rng.randint(4, 28, 2)
        image[y : y + 14, x : x + 14] = [220, 20, 20]
        mask[y : y + 14, x : x + 14] = 255
        Image.fromarray(image).save(tmp_path / f"image{index}.png")
        Image.fromarray(mask).save(tmp_path / f"mask{index}.png")
        lines.append(json.dumps({"image": f"image{index}.png", "mask": f"mask{index}.png", "prompt": "red square"}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def _config(workspace, run, **extra):
    overrides = [
        f"model={workspace / 'base'}",
        f"output_dir={workspace / run}",
        f"datasets=[{{kind: custom, path: {workspace / 'data.jsonl'}}}]",
        "batch_size=2",
        "conversations_per_image=1",
        "warmup_steps=2",
        "lr=0.003",
        "log_every=1000",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_training_config(None, overrides)


def test_loss_falls_and_export_reproduces_the_trained_model(workspace):
    run = train(_config(workspace, "run", steps_per_epoch=24, save_every=24), progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 24
    first, last = np.mean([r["loss"] for r in log[:4]]), np.mean([r["loss"] for r in log[-4:]])
    assert last < 0.9 * first
    exported = export_run(run, workspace / "exported")
    segmenter = Segmenter.from_pretrained(str(exported), device="cpu")
    # the merged model equals base + trained LoRA: same weights on the trained rows and decoder
    state = torch.load(run / "checkpoint-24" / STATE_FILE, weights_only=True)["trainable"]
    decoder_key = next(k for k in state if "mask_decoder.iou_token" in k)
    torch.testing.assert_close(segmenter.model.sam.mask_decoder.iou_token.weight, state[decoder_key])
    prediction = segmenter.predict(str(workspace / "image0.png"), "Please segment the red square.", 6, force_seg=True)
    assert prediction.masks and prediction.masks[0].shape == (48, 64)


def test_kill_and_resume_reproduces_the_uninterrupted_run(workspace):
    whole = train(_config(workspace, "whole", steps_per_epoch=6, save_every=3), progress=False)
    _ = train(_config(workspace, "split", steps_per_epoch=6, save_every=3), stop_after=3, progress=False)
    assert (workspace / "split" / "checkpoint-3").is_dir() and not (workspace / "split" / "checkpoint-6").exists()
    (workspace / "split" / ".tmp-checkpoint-5").mkdir()  # a crash mid-write leaves this; it must be ignored
    split = train(_config(workspace, "split", steps_per_epoch=6, save_every=3), resume=True, progress=False)
    a = torch.load(whole / "checkpoint-6" / STATE_FILE, weights_only=True)
    b = torch.load(split / "checkpoint-6" / STATE_FILE, weights_only=True)
    assert a["step"] == b["step"] == 6
    for name in a["trainable"]:
        torch.testing.assert_close(a["trainable"][name], b["trainable"][name], atol=1e-6, rtol=0)


def test_config_errors_are_one_line(workspace):
    with pytest.raises(InputError, match="unknown training config keys: bogus"):
        load_training_config(None, ["model=x", "datasets=[{kind: custom, path: x}]", "bogus=1"])
    with pytest.raises(InputError, match="names no model"):
        load_training_config(None, ["datasets=[{kind: custom, path: x}]"])
    with pytest.raises(InputError, match="not found"):
        load_training_config(workspace / "missing.yaml")
    (workspace / "bad.jsonl").write_text('{"image": "nope.png", "mask": "mask0.png", "prompt": "x"}\n')
    from reasonseg.data.custom import read_custom_jsonl

    with pytest.raises(InputError, match=r"bad.jsonl:1: missing file .*nope.png"):
        read_custom_jsonl(workspace / "bad.jsonl")


def test_tiny_model_overfits_a_handful_of_samples(workspace):
    """The whole path learns: after a bounded number of steps the training samples are segmented (gIoU >= 0.9)."""
    run = train(_config(workspace, "overfit", steps_per_epoch=24, save_every=24, lr=0.01), progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["mask_bce"] < 0.05 and log[-1]["mask_dice"] < 0.05
    segmenter = Segmenter.from_pretrained(str(export_run(run, workspace / "overfit-model")), device="cpu")
    ious = []
    for index in range(3):
        truth = np.asarray(Image.open(workspace / f"mask{index}.png")) > 0
        prediction = segmenter.predict(str(workspace / f"image{index}.png"), "Please segment the red square in this image.",
                                       8, force_seg=True)
        mask = prediction.masks[0]
        ious.append((mask & truth).sum() / (mask | truth).sum())
    assert np.mean(ious) >= 0.9, ious
