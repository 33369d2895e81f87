"""Fine-tuning from a Sa2VA checkpoint: `reasonseg train` on the custom format, LoRA on the LLM, the SAM2 mask decoder
and text_hidden_fcs trained, `reasonseg export` merging LoRA into a checkpoint that Segmenter loads and predicts with.

A tiny config-built Sa2VA (``reasonseg.modeling.sa2va.tiny``) saved natively trains in a few seconds; the original
(``Sa2VAChatModel``) layout is trained from the reference fixture (``../shared/fixtures/sa2va_ref_tiny``), which
skips when it is absent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from reasonseg import Segmenter
from reasonseg.cli.main import main
from reasonseg.errors import CheckpointError
from reasonseg.training.collate import IGNORE_INDEX, ReasonSegCollator, TrainingSample, encode_conversation
from reasonseg.training.config import load_training_config
from reasonseg.training.export import export_run
from reasonseg.training.trainer import STATE_FILE, train

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "sa2va_ref_tiny" / "checkpoint"
COLOURS = [(220, 20, 20), (20, 190, 20), (20, 20, 220)]
STEPS = 30
QWEN_STEPS = 60  # the tiny Qwen2.5-VL needs twice the InternVL one's steps (30: mean IoU 0.35)


def _write_dataset(root: Path) -> Path:
    """Three 64x64 images, each with one coloured 24x24 square, their 0/255 masks, and the custom JSONL."""
    rng = np.random.RandomState(0)
    lines = []
    for index, colour in enumerate(COLOURS):
        image = np.full((64, 64, 3), 128, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        y, x = rng.randint(4, 36, 2)
        image[y : y + 24, x : x + 24] = colour
        mask[y : y + 24, x : x + 24] = 255
        Image.fromarray(image).save(root / f"image{index}.png")
        Image.fromarray(mask).save(root / f"mask{index}.png")
        lines.append(json.dumps({"image": f"image{index}.png", "mask": f"mask{index}.png", "prompt": "the square"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


def _overrides(model: Path, output_dir: Path, data: Path, steps: int, **extra) -> list[str]:
    return [
        f"model={model}",
        f"output_dir={output_dir}",
        f"datasets=[{{kind: custom, path: {data}}}]",
        "batch_size=2",
        "conversations_per_image=1",
        "warmup_steps=2",
        "lr=0.005",
        "log_every=1000",
        "tensorboard=false",
        f"steps_per_epoch={steps}",
        f"save_every={steps}",
    ] + [f"{k}={v}" for k, v in extra.items()]


def _records(run: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("event") == event]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from reasonseg.modeling.sa2va.tiny import build_tiny_sa2va

    root = tmp_path_factory.mktemp("sa2va_training")
    model, processor = build_tiny_sa2va(seed=0)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    _write_dataset(root)
    return root


@pytest.fixture(scope="module")
def trained(workspace):
    """One run from the native tiny checkpoint (validated on its training data at the end), and its export."""
    config = load_training_config(None, _overrides(workspace / "base", workspace / "run", workspace / "data.jsonl",
                                                   STEPS, val_data=f"custom:{workspace / 'data.jsonl'}"))
    run = train(config, progress=False)
    return run, export_run(run, workspace / "exported")


def test_mask_loss_falls(trained):
    run, _ = trained
    log = _records(run, "train")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    mask = [r["mask_bce"] + r["mask_dice"] for r in log]
    first, last = np.mean(mask[:3]), np.mean(mask[-3:])
    assert first > 1.5  # measured 1.77 (BCE x2 + Dice x0.5 of the untrained model)
    assert last < 0.3 * first, mask  # measured 0.12 (ratio 0.07)
    assert np.mean([r["ce"] for r in log[-3:]]) < np.mean([r["ce"] for r in log[:3]])
    (validation,) = _records(run, "validation")
    assert validation["count"] == 3 and validation["giou"] >= 0.8, validation  # measured 0.91


def test_trainable_parts_are_lora_the_sam2_decoder_and_text_hidden_fcs(trained, workspace):
    run, _ = trained
    names = list(torch.load(run / f"checkpoint-{STEPS}" / STATE_FILE, weights_only=True)["trainable"])
    lora = [n for n in names if ".lora_" in n]
    assert lora and all(".language_model." in n and (".q_proj." in n or ".v_proj." in n) for n in lora)
    assert any(".sam.mask_decoder.conv_s0." in n for n in names)  # SAM2's high-resolution convolutions too
    assert any(".sam.mask_decoder.transformer." in n for n in names)
    assert {n.split(".seg_projection.")[1] for n in names if ".seg_projection." in n} == {
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}
    others = [n for n in names if ".lora_" not in n and ".sam.mask_decoder." not in n and ".seg_projection." not in n]
    # the vocabulary matrices (only their [SEG] row learns); nothing of InternViT, mlp1, SAM2's encoders
    assert sorted(n.split("language_model.")[1] for n in others) == ["lm_head.weight", "model.embed_tokens.weight"]

    # the export equals the base where training does not reach, and differs where it does
    base = Segmenter.from_pretrained(str(workspace / "base"), device="cpu").model.state_dict()
    tuned = Segmenter.from_pretrained(str(trained[1]), device="cpu").model.state_dict()
    assert set(base) == set(tuned)
    frozen = ("vision_tower.", "multi_modal_projector.", "sam.vision_encoder.", "sam.prompt_encoder.",
              "language_model.model.layers.0.self_attn.k_proj.")
    for key in base:
        if key.startswith(frozen):
            assert torch.equal(base[key], tuned[key]), key
    for key in ("sam.mask_decoder.iou_token.weight", "seg_projection.layers.0.weight",
                "language_model.model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(base[key], tuned[key]), key
    seg_id = json.loads((workspace / "base" / "config.json").read_text())["seg_token_id"]
    embed = "language_model.model.embed_tokens.weight"
    changed = torch.nonzero((base[embed] != tuned[embed]).any(dim=1)).flatten().tolist()
    assert changed == [seg_id]


def test_exported_model_segments_the_training_images(trained, workspace):
    _, exported = trained
    assert json.loads((exported / "config.json").read_text())["model_type"] == "reasonseg_sa2va"
    segmenter = Segmenter.from_pretrained(str(exported), device="cpu")
    ious = []
    for index in range(len(COLOURS)):
        truth = np.asarray(Image.open(workspace / f"mask{index}.png")) > 0
        prediction = segmenter.predict(str(workspace / f"image{index}.png"), "the square", max_new_tokens=8,
                                       force_seg=True)
        assert prediction.masks[0].shape == (64, 64)
        ious.append(_iou(prediction.masks[0], truth))
    assert min(ious) >= 0.75 and np.mean(ious) >= 0.85, ious  # measured 0.92, 0.96, 0.85


def test_training_pieces_follow_sa2va_and_equal_the_inference_prompt(workspace):
    """xtuner's format: instruction unsupervised, answer + <|im_end|> supervised, the separator unsupervised; the ids
    are those the processor gives the rendered conversation at inference."""
    from reasonseg.processing.sa2va import Sa2VAProcessor

    processor = Sa2VAProcessor.from_pretrained(workspace / "base")
    turns = [("the square", "Sure, [SEG]."), ("And the circle?", "It is [SEG].")]
    ids, labels = encode_conversation(processor, turns)
    assert ids == processor.encode(processor.conversation_prompt(turns))
    assert ids.count(processor.settings.image_token_index) == 1
    supervised = [i for i in labels if i != IGNORE_INDEX]
    im_end = processor.eos_token_id
    answers = [processor.tokenizer.encode(a, add_special_tokens=False) + [im_end] for _, a in turns]
    assert supervised == answers[0] + answers[1]
    newline = processor.tokenizer.encode("\n", add_special_tokens=False)
    assert ids[-1:] == newline and labels[-1] == IGNORE_INDEX  # the separator after the last answer


def test_images_with_different_tile_counts_share_a_batch(workspace):
    """A wide image (two tiles + thumbnail) and a square one (one tile) collate to a per-image list of tiles."""
    from reasonseg.modeling.sa2va.tiny import build_tiny_sa2va

    model, processor = build_tiny_sa2va(seed=0)
    samples = []
    for size in ((40, 80), (64, 64)):
        image = Image.fromarray(np.full((*size, 3), 90, np.uint8))
        masks = np.zeros((1, *size), np.uint8)
        masks[0, 5:20, 5:20] = 1
        samples.append(TrainingSample(image, [[("the square", "Sure, [SEG].")]], masks))
    batch = ReasonSegCollator(processor, 512)(samples)
    assert [tuple(p.shape[:2]) for p in batch["pixel_values"]] == [(1, 3), (1, 1)]
    model.train()
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and [tuple(m.shape) for m in out.pred_masks] == [(1, 40, 80), (1, 64, 64)]
    assert model.sam.mask_decoder.iou_token.weight.grad is not None


def test_a_model_path_that_is_not_a_checkpoint_is_one_line(workspace, tmp_path, capsys):
    data = workspace / "data.jsonl"
    for model, words in [(workspace, "has no config.json; it is not a model checkpoint"),
                         (tmp_path / "nowhere", "not found")]:
        config = load_training_config(None, _overrides(model, tmp_path / "run", data, 2))
        with pytest.raises(CheckpointError, match=words) as caught:
            train(config, progress=False)
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"training config model '{model}'")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model": str(workspace), "datasets": [
        {"kind": "custom", "path": str(data)}], "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training config model") and "Traceback" not in err[0]


def test_cli_train_export_predict(workspace, tmp_path, capsys):
    """`reasonseg train` / `export` / `predict` on a Sa2VA checkpoint, as a user runs them, with the recipe's LoRA
    (every linear layer of the LLM) and activation checkpointing."""
    config = tmp_path / "sa2va.yaml"
    config.write_text(yaml.safe_dump({"model": str(workspace / "base"), "output_dir": str(tmp_path / "run"),
                                      "datasets": [{"kind": "custom", "path": str(workspace / "data.jsonl")}]}))
    recipe = load_training_config(ROOT / "configs" / "sa2va-finetune.yaml")
    settings = ["steps_per_epoch=2", "save_every=2", "batch_size=2", "conversations_per_image=1", "tensorboard=false",
                "gradient_checkpointing=true", f"lora.target_modules=[{', '.join(recipe.lora.target_modules)}]"]
    assert main(["train", "--config", str(config), "--no-progress", *settings]) == 0
    assert len(_records(tmp_path / "run", "train")) == 2
    state = torch.load(tmp_path / "run" / "checkpoint-2" / STATE_FILE, weights_only=True)["trainable"]
    wrapped = {n.split(".")[-4] for n in state if ".lora_A." in n}
    assert wrapped == set(recipe.lora.target_modules)
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    assert main(["predict", "--model", str(tmp_path / "model"), "--image", str(workspace / "image0.png"),
                 "--prompt", "the square", "--out", str(tmp_path / "out"), "--max-new-tokens", "4", "--force-seg",
                 "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "out" / "image0.json").read_text())
    assert len(record["masks"]) == 1 and (tmp_path / "out" / "image0_mask_0.png").is_file()


def test_original_sa2va_layout_trains_and_exports(workspace, tmp_path):
    """An original checkpoint (Sa2VAChatModel, InternViT qkv fused, SAM2's own names; 448-px tiles and a 1024-px
    SAM2 input) is a starting model too; the export is a native checkpoint that loads and predicts."""
    if not FIXTURE.is_dir():
        pytest.skip(f"Sa2VA reference fixture not found at {FIXTURE} (it ships beside the repo, not in it)")
    assert json.loads((FIXTURE / "config.json").read_text())["architectures"] == ["Sa2VAChatModel"]
    config = load_training_config(None, _overrides(FIXTURE, tmp_path / "run", workspace / "data.jsonl", 2))
    run = train(config, progress=False)
    assert [np.isfinite(r["loss"]) for r in _records(run, "train")] == [True, True]
    exported = export_run(run, tmp_path / "exported")
    assert json.loads((exported / "config.json").read_text())["model_type"] == "reasonseg_sa2va"
    base = Segmenter.from_pretrained(str(FIXTURE), device="cpu")
    tuned = Segmenter.from_pretrained(str(exported), device="cpu")
    assert tuned.processor.settings == base.processor.settings  # Sa2VA's 448-px tiles and 1024-px SAM2 input kept
    for key, value in base.model.state_dict().items():
        if key.startswith(("vision_tower.", "sam.vision_encoder.")):
            assert torch.equal(value, tuned.model.state_dict()[key]), key
    prediction = tuned.predict(str(workspace / "image0.png"), "the square", max_new_tokens=4, force_seg=True)
    assert prediction.num_masks == 1 and prediction.masks[0].shape == (64, 64)


def test_sa2va_recipe_is_a_valid_training_config():
    config = load_training_config(ROOT / "configs" / "sa2va-finetune.yaml")
    assert config.model == "ByteDance/Sa2VA-4B" and [d.kind for d in config.datasets] == ["custom"]
    assert (config.lora.r, config.lora.alpha) == (128, 256) and "down_proj" in config.lora.target_modules
    assert (config.lr, config.betas, config.bce_loss_weight, config.dice_loss_weight) == (4e-5, (0.9, 0.999), 2.0, 0.5)


# ---- the Qwen-VL family (Sa2VAChatModelQwen) ----


@pytest.fixture(scope="module")
def trained_qwen(workspace):
    """A tiny Qwen2.5-VL Sa2VA saved natively, trained 60 steps with the recipe's LoRA targets (the LLM's MLP names
    are the vision blocks' too), and exported."""
    from reasonseg.modeling.sa2va.tiny_qwen import build_tiny_sa2va_qwen

    model, processor = build_tiny_sa2va_qwen(seed=0)
    model.save_pretrained(workspace / "qwen_base")
    processor.save_pretrained(workspace / "qwen_base")
    targets = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
    config = load_training_config(None, _overrides(workspace / "qwen_base", workspace / "qwen_run",
                                                   workspace / "data.jsonl", QWEN_STEPS,
                                                   **{"lora.target_modules": targets}))
    run = train(config, progress=False)
    return run, export_run(run, workspace / "qwen_exported")


def test_qwen_trains_lora_on_the_llm_only_and_the_mask_loss_falls(trained_qwen, workspace):
    run, exported = trained_qwen
    names = list(torch.load(run / f"checkpoint-{QWEN_STEPS}" / STATE_FILE, weights_only=True)["trainable"])
    lora = sorted({n.split(".lora_")[0] for n in names if ".lora_" in n})
    # 2 layers x 7 projections, every one under the language model; none in the vision tower's blocks or merger
    assert len(lora) == 14 and all(n.startswith("base_model.model.vlm.model.language_model.layers.") for n in lora)
    assert not any(".visual." in n for n in names)
    others = sorted(n for n in names if ".lora_" not in n and ".sam.mask_decoder." not in n)
    assert others == ["base_model.model.seg_projection.layers.0.bias", "base_model.model.seg_projection.layers.0.weight",
                      "base_model.model.seg_projection.layers.2.bias", "base_model.model.seg_projection.layers.2.weight",
                      "base_model.model.vlm.lm_head.weight", "base_model.model.vlm.model.language_model.embed_tokens.weight"]
    assert any(".sam.mask_decoder.conv_s0." in n for n in names)

    log = _records(run, "train")
    assert [r["step"] for r in log] == list(range(1, QWEN_STEPS + 1))
    mask = [r["mask_bce"] + r["mask_dice"] for r in log]
    first, last = np.mean(mask[:3]), np.mean(mask[-5:])
    assert first > 1.5 and last < 0.3 * first, mask  # measured 1.77 -> 0.13

    base = Segmenter.from_pretrained(str(workspace / "qwen_base"), device="cpu").model.state_dict()
    tuned = Segmenter.from_pretrained(str(exported), device="cpu")
    assert type(tuned.model).__name__ == "Sa2VAQwenForCausalLM"
    state = tuned.model.state_dict()
    assert set(base) == set(state)
    for key in base:
        if key.startswith(("vlm.model.visual.", "sam.vision_encoder.", "sam.prompt_encoder.")):
            assert torch.equal(base[key], state[key]), key
    for key in ("vlm.model.language_model.layers.0.mlp.gate_proj.weight", "seg_projection.layers.0.weight",
                "sam.mask_decoder.iou_token.weight"):
        assert not torch.equal(base[key], state[key]), key
    seg_id = tuned.processor.seg_token_id
    embed = "vlm.model.language_model.embed_tokens.weight"
    assert torch.nonzero((base[embed] != state[embed]).any(dim=1)).flatten().tolist() == [seg_id]
    ious = []
    for index in range(len(COLOURS)):
        truth = np.asarray(Image.open(workspace / f"mask{index}.png")) > 0
        prediction = tuned.predict(str(workspace / f"image{index}.png"), "the square", max_new_tokens=8, force_seg=True)
        assert prediction.masks[0].shape == (64, 64)
        ious.append(_iou(prediction.masks[0], truth))
    assert min(ious) >= 0.75 and np.mean(ious) >= 0.85, ious  # measured 0.93, 0.90, 0.93


def test_qwen_lora_pattern_and_activation_checkpointing():
    """The LoRA regex is anchored at the Qwen-VL language model's path, and activation checkpointing switches on
    its layers (the Qwen model has no ``language_model`` attribute of its own)."""
    from reasonseg.modeling.sa2va.tiny_qwen import build_tiny_sa2va_qwen
    from reasonseg.training.model_setup import language_lora_pattern, language_model_path, prepare_for_training

    model, processor = build_tiny_sa2va_qwen(seed=0)
    assert language_model_path(model) == "vlm.model.language_model"
    pattern = language_lora_pattern(["gate_proj"], language_model_path(model))
    assert re.fullmatch(pattern, "vlm.model.language_model.layers.1.mlp.gate_proj")
    assert not re.fullmatch(pattern, "vlm.model.visual.blocks.0.mlp.gate_proj")
    config = load_training_config(None, ["model=unused", "datasets=[{kind: custom, path: unused}]",
                                         "gradient_checkpointing=true"])
    peft_model = prepare_for_training(model, config, [processor.seg_token_id])
    base = peft_model.get_base_model()
    assert base.decoder.is_activation_checkpointing and not base.vision_tower.is_activation_checkpointing
