"""Training on a tiny model: loss falls, kill-and-resume equals an uninterrupted run, export merges LoRA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from reasonseg import Segmenter
from reasonseg.errors import InputError
from reasonseg.evaluation import evaluate
from reasonseg.training.config import load_training_config
from reasonseg.training.export import export_run
from reasonseg.training.trainer import STATE_FILE, train
from reasonseg.training.validation import ValidationSet, validate
from reasonseg.modeling.tiny import build_tiny_model


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
        # the same samples as a ReasonSeg folder (for validation): the square as the target polygon, and an ignore
        # strip (smaller, so painted over it) across the square's top rows and the background beside them
        val = tmp_path / "val"
        val.mkdir(exist_ok=True)
        Image.fromarray(image).save(val / f"sample{index}.png")
        x0, y0 = int(x), int(y)
        square = [[x0, y0], [x0 + 13, y0], [x0 + 13, y0 + 13], [x0, y0 + 13]]
        shapes = [{"label": "target", "points": square},
                  {"label": "ignore", "points": [[x0 - 3, y0], [x0 + 16, y0], [x0 + 16, y0 + 3], [x0 - 3, y0 + 3]]}]
        (val / f"sample{index}.json").write_text(
            json.dumps({"text": ["red square"], "is_sentence": False, "shapes": shapes}))
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


@pytest.mark.slow
def test_loss_falls_and_export_reproduces_the_trained_model(workspace):
    run = train(_config(workspace, "run", steps_per_epoch=24, save_every=24), progress=False)
    log = _records(run, "train")
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


def test_train_sam_encoder_trains_and_exports_sams_image_encoder(workspace):
    frozen = train(_config(workspace, "frozen", steps_per_epoch=2, save_every=2), progress=False)
    assert not any("vision_encoder" in k for k in torch.load(frozen / "checkpoint-2" / STATE_FILE, weights_only=True)["trainable"])
    run = train(_config(workspace, "encoder", steps_per_epoch=2, save_every=2, train_sam_encoder="true"), progress=False)
    state = torch.load(run / "checkpoint-2" / STATE_FILE, weights_only=True)["trainable"]
    base = build_tiny_model(seed=0)[0].sam.vision_encoder.state_dict()
    exported = Segmenter.from_pretrained(str(export_run(run, workspace / "exported")), device="cpu").model
    trained = exported.sam.vision_encoder.state_dict()
    encoder_keys = {k for k in state if ".sam.vision_encoder." in k}
    assert len(encoder_keys) == len(base)  # every tensor of the encoder was trained ...
    moved = [name for name in base if not torch.equal(trained[name], base[name])]
    assert len(moved) > len(base) // 2  # ... moved by the mask losses, and exported with the rest
    key = next(k for k in encoder_keys if k.endswith("patch_embed.projection.weight"))
    torch.testing.assert_close(trained["patch_embed.projection.weight"], state[key])


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_run(workspace):
    whole = train(_config(workspace, "whole", steps_per_epoch=6, save_every=3), progress=False)
    _ = train(_config(workspace, "split", steps_per_epoch=6, save_every=3), stop_after=4, progress=False)
    assert (workspace / "split" / "checkpoint-3").is_dir() and not (workspace / "split" / "checkpoint-6").exists()
    # a clean stop saves its step; a kill after step 4 would not have: take it away to resume from checkpoint-3
    shutil.rmtree(workspace / "split" / "checkpoint-4")
    (workspace / "split" / ".tmp-checkpoint-5").mkdir()  # a crash mid-write leaves this; it must be ignored
    split = train(_config(workspace, "split", steps_per_epoch=6, save_every=3), resume=True, progress=False)
    a = torch.load(whole / "checkpoint-6" / STATE_FILE, weights_only=True)
    b = torch.load(split / "checkpoint-6" / STATE_FILE, weights_only=True)
    assert a["step"] == b["step"] == 6
    # the resumed run's log reads as one run: the lines written after checkpoint-3 by the killed run are replaced
    assert [r["step"] for r in _records(split, "train")] == [1, 2, 3, 4, 5, 6]
    for name in a["trainable"]:
        torch.testing.assert_close(a["trainable"][name], b["trainable"][name], atol=1e-6, rtol=0)


def test_a_new_run_never_starts_over_an_old_runs_checkpoints(workspace):
    run = train(_config(workspace, "run", steps_per_epoch=2, save_every=2), progress=False)
    saved = (run / "checkpoint-2" / STATE_FILE).read_bytes()
    with pytest.raises(InputError, match="already holds checkpoints; pass --resume"):
        train(_config(workspace, "run", steps_per_epoch=4, save_every=2), progress=False)
    assert (run / "checkpoint-2" / STATE_FILE).read_bytes() == saved
    broken = workspace / "broken"
    (broken / "checkpoint-1").mkdir(parents=True)  # no state file: a copy cut short
    with pytest.raises(InputError, match="no complete checkpoint to resume from"):
        train(_config(workspace, "broken", steps_per_epoch=2), resume=True, progress=False)
    # a run killed before its first checkpoint leaves only log lines: a new start replaces them
    killed = workspace / "killed"
    killed.mkdir()
    (killed / "log.jsonl").write_text("".join(json.dumps({"event": "train", "step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3)))
    train(_config(workspace, "killed", steps_per_epoch=2, save_every=2), progress=False)
    assert [r["step"] for r in _records(killed, "train")] == [1, 2]
    assert all(r["loss"] != 9.0 for r in _records(killed, "train"))


def test_overrides_step_into_dataset_entries(workspace):
    datasets = "[{kind: custom, path: a.jsonl}, {kind: custom, path: b.jsonl, rate: 2}]"
    config = load_training_config(None, ["model=x", f"datasets={datasets}", "datasets.1.rate=0.5",
                                         "datasets.0.path=c.jsonl", "lora.r=4"])
    assert [(d.path, d.rate) for d in config.datasets] == [("c.jsonl", 1.0), ("b.jsonl", 0.5)]
    assert config.lora.r == 4
    with pytest.raises(InputError, match=r"'datasets.2.rate=1': datasets is a list of 2; give an index from 0 to 1"):
        load_training_config(None, ["model=x", f"datasets={datasets}", "datasets.2.rate=1"])
    with pytest.raises(InputError, match=r"'lr.x=1': lr is a single value, not a mapping"):
        load_training_config(None, ["model=x", f"datasets={datasets}", "lr=1e-4", "lr.x=1"])


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


def _records(run, event):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("event") == event]


@pytest.mark.slow
def test_tiny_model_overfits_a_handful_of_samples(workspace):
    """The whole path learns: after a bounded number of steps the training samples are segmented (gIoU >= 0.9),
    and the periodic validation (forced-[SEG] protocol, on the same samples as a ReasonSeg folder) says so."""
    run = train(_config(workspace, "overfit", steps_per_epoch=24, save_every=24, lr=0.01,
                        val_data=str(workspace / "val"), val_every=12), progress=False)
    log = _records(run, "train")
    assert len(log) == 24
    assert log[-1]["mask_bce"] < 0.05 and log[-1]["mask_dice"] < 0.05
    validations = _records(run, "validation")
    assert [v["step"] for v in validations] == [12, 24]
    assert all(v["count"] == 3 for v in validations)
    assert validations[-1]["giou"] >= 0.9 and validations[-1]["ciou"] >= 0.9, validations
    segmenter = Segmenter.from_pretrained(str(export_run(run, workspace / "overfit-model")), device="cpu")
    ious = []
    for index in range(3):
        truth = np.asarray(Image.open(workspace / f"mask{index}.png")) > 0
        prediction = segmenter.predict(str(workspace / f"image{index}.png"), "Please segment the red square in this image.",
                                       8, force_seg=True)
        mask = prediction.masks[0]
        ious.append((mask & truth).sum() / (mask | truth).sum())
    assert np.mean(ious) >= 0.9, ious


@pytest.mark.slow
def test_validation_equals_reasonseg_eval_in_lisa_mode(workspace):
    """Training's validation is `reasonseg eval --mode lisa` (forced [SEG]): same gIoU, cIoU and counts, ignore
    pixels left out, whatever the validation batch size; the model goes back to its mode."""
    model, processor = build_tiny_model(seed=1)  # a seed whose untrained masks cover part of each square
    expected = evaluate(Segmenter(model, processor), f"reasonseg:{workspace / 'val'}", mode="lisa")
    overall = expected.metrics["results"]["lisa"]["protocol"]["overall"]
    assert overall["count"] == 3 and 0 < overall["giou"] < 1  # the untrained model hits part of the squares
    model.train()
    val_set = ValidationSet.load(str(workspace / "val"))
    for batch_size in (1, 2):
        summary = validate(model, processor, val_set, batch_size=batch_size)
        assert summary["count"] == 3
        assert summary["giou"] == pytest.approx(overall["giou"], abs=1e-12)
        assert summary["ciou"] == pytest.approx(overall["ciou"], abs=1e-12)
        assert (summary["intersection"], summary["union"]) == (overall["intersection"], overall["union"])
        assert model.training
    # with the processor keeping each mask's largest region, both keep it
    processor.settings.mask_regions = "largest"
    largest = evaluate(Segmenter(model, processor), f"reasonseg:{workspace / 'val'}", mode="lisa")
    overall = largest.metrics["results"]["lisa"]["protocol"]["overall"]
    summary = validate(model, processor, val_set, batch_size=2)
    assert (summary["intersection"], summary["union"]) == (overall["intersection"], overall["union"])


@pytest.mark.slow
def test_tensorboard_and_progress_bar_show_the_loss_terms(workspace, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(_config(workspace, "board", steps_per_epoch=2, save_every=2, log_every=1,
                        val_data=f"reasonseg:{workspace / 'val'}", val_max_samples=2), progress=True)
    err = capsys.readouterr().err
    for term in ("loss=", "ce=", "mask_bce=", "mask_dice=", "lr="):
        assert term in err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/mask_bce", "train/mask_dice", "train/lr", "val/giou", "val/ciou"} <= tags
    logged = _records(run, "train")
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in logged])
    assert [e.step for e in events.Scalars("val/giou")] == [2]
    assert _records(run, "validation")[0]["count"] == 2
    info = json.loads((run / "run.json").read_text())
    assert info["num_processes"] == 1 and info["global_batch"] == 2


def test_precision_auto_runs_fp32_where_bf16_is_not_native_and_run_json_says_so(workspace, monkeypatch):
    from reasonseg.training import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    run = train(_config(workspace, "auto", steps_per_epoch=1, precision="auto"), progress=False)
    assert json.loads((run / "run.json").read_text())["mixed_precision"] == "no"
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    run = train(_config(workspace, "auto_native", steps_per_epoch=1, precision="auto"), progress=False)
    assert json.loads((run / "run.json").read_text())["mixed_precision"] == "bf16"


def test_qlora_is_refused_off_cuda_and_bad_validation_settings_are_one_line(workspace):
    for flag in ("load_in_4bit", "load_in_8bit"):
        with pytest.raises(InputError, match=rf"{flag} \(QLoRA\) trains only on a CUDA GPU"):
            train(_config(workspace, "qlora", **{flag: "true"}), progress=False)
    with pytest.raises(InputError, match="one of load_in_4bit and load_in_8bit"):
        _config(workspace, "x", load_in_4bit="true", load_in_8bit="true")
    with pytest.raises(InputError, match="val_every but no val_data"):
        _config(workspace, "x", val_every=5)
    with pytest.raises(InputError, match="val_data .*not found"):
        train(_config(workspace, "x", val_data=str(workspace / "nowhere")), progress=False)
    # a bad dataset entry is found before the model loads (here there is no model to load at all)
    with pytest.raises(InputError, match="unknown query kinds 'nearest'"):
        train(_config(workspace, "x", model=str(workspace / "no_model_here"),
                      datasets="[{kind: toy_world, path: train, kinds: nearest}]"), progress=False)
