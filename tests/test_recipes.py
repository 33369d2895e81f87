"""configs/lisa-7b.yaml and configs/lisa-13b-llama2.yaml reproduce LISA's training defaults, and each value reaches
the part of training that uses it: optimiser, scheduler, data mixer, LoRA set-up, loss weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from reasonseg.data import lisa_tree
from reasonseg.training import datasets as training_datasets
from reasonseg.training.config import load_training_config
from reasonseg.training.model_setup import prepare_for_training, trainable_token_ids
from reasonseg.training.trainer import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["lisa-7b.yaml", "lisa-13b-llama2.yaml"]
LISA_MIX = {"sem_seg": 9, "refer_seg": 3, "vqa": 3, "reason_seg": 1}


@pytest.fixture(params=RECIPES)
def recipe(request):
    return load_training_config(ROOT / "configs" / request.param)


def test_recipe_values(recipe):
    assert (recipe.epochs, recipe.steps_per_epoch, recipe.batch_size, recipe.grad_accumulation_steps) == (10, 500, 2, 10)
    assert (recipe.lr, recipe.warmup_steps, recipe.betas, recipe.weight_decay) == (3e-4, 100, (0.9, 0.95), 0.0)
    assert recipe.max_grad_norm == 1.0 and recipe.optimizer == "adamw"
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout, recipe.lora.target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])
    assert (recipe.ce_loss_weight, recipe.bce_loss_weight, recipe.dice_loss_weight) == (1.0, 2.0, 0.5)
    assert recipe.conversations_per_image == 3 and recipe.max_length == 512
    assert recipe.precision == "bf16" and recipe.gradient_checkpointing and recipe.train_mask_decoder


def test_optimizer_and_scheduler_get_the_recipe(recipe, tiny):
    model, processor = tiny
    peft_model = prepare_for_training(model, recipe, trainable_token_ids(processor))
    optimizer, scheduler = build_optimizer(peft_model, recipe)
    assert type(optimizer).__name__ == "AdamW"
    (group,) = optimizer.param_groups
    assert group["initial_lr"] == 3e-4 and group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.0
    # WarmupDecayLR(warmup_min_lr=0, warmup_max_lr=lr, warmup_num_steps=100, total_num_steps=epochs*steps, linear)
    total = recipe.epochs * recipe.steps_per_epoch
    seen = {}
    for step in range(total + 1):
        seen[step] = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
    expected = {0: 0.0, 50: 1.5e-4, 100: 3e-4, 2550: 3e-4 * (total - 2550) / (total - 100), total: 0.0}
    for step, lr in expected.items():
        assert seen[step] == pytest.approx(lr, abs=1e-12), step
    assert max(seen.values()) == pytest.approx(3e-4)


def test_lora_lr_puts_the_adapters_in_their_own_group(tiny):
    from reasonseg.errors import InputError

    model, processor = tiny
    config = load_training_config(ROOT / "configs" / RECIPES[0], ["lora_lr=1e-4", "warmup_steps=0"])
    assert config.lora_lr == 1e-4
    peft_model = prepare_for_training(model, config, trainable_token_ids(processor))
    optimizer, scheduler = build_optimizer(peft_model, config)
    rest, lora = optimizer.param_groups
    names = {id(p): name for name, p in peft_model.named_parameters()}
    assert lora["initial_lr"] == 1e-4 and rest["initial_lr"] == 3e-4
    assert lora["params"] and all("lora_" in names[id(p)] for p in lora["params"])
    assert any("mask_decoder" in names[id(p)] for p in rest["params"])
    assert not any("lora_" in names[id(p)] for p in rest["params"])
    trained = sum(p.requires_grad for p in peft_model.parameters())
    assert len(lora["params"]) + len(rest["params"]) == trained
    optimizer.step()
    scheduler.step()  # the schedule scales both groups by the same factor
    half = config.total_steps // 2
    for _ in range(half - 1):
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([3e-4 * 0.5, 1e-4 * 0.5])
    with pytest.raises(InputError, match="lora_lr"):
        load_training_config(ROOT / "configs" / RECIPES[0], ["lora_lr=0"])
    with pytest.raises(InputError, match="no trained LoRA"):
        build_optimizer(torch.nn.Linear(2, 2), config)


def test_lora_start_step_keeps_the_adapters_still_until_then_and_warms_them_up_from_there(tiny):
    from reasonseg.errors import InputError

    model, processor = tiny
    config = load_training_config(ROOT / "configs" / RECIPES[0], ["lora_start_step=20", "warmup_steps=10",
                                                                 "steps_per_epoch=100", "epochs=1"])
    peft_model = prepare_for_training(model, config, trainable_token_ids(processor))
    optimizer, scheduler = build_optimizer(peft_model, config)
    rest, lora = optimizer.param_groups
    names = {id(p): name for name, p in peft_model.named_parameters()}
    assert lora["params"] and all("lora_" in names[id(p)] for p in lora["params"])
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    seen = []
    for step in range(100):
        seen.append(scheduler.get_last_lr())
        if step == 5:  # an update with a gradient on every trained tensor: only the non-LoRA ones move
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.grad = torch.ones_like(p)
            optimizer.step()
            moved = {name for name, p in peft_model.named_parameters() if p.requires_grad
                     and not torch.equal(p, before[name])}
        scheduler.step()
    peak = config.lr
    assert all(lora_lr == 0 for _, lora_lr in seen[:21])
    assert seen[25][1] == pytest.approx(peak * 0.5) and seen[30][1] == pytest.approx(peak)
    assert seen[65][1] == pytest.approx(peak * 0.5)  # then linear decay to 0 at the last step
    assert seen[10][0] == pytest.approx(peak) and seen[55][0] == pytest.approx(peak * 0.5)  # the rest as before
    assert moved and not any("lora_" in name for name in moved)
    assert any("mask_decoder" in name for name in moved)
    with pytest.raises(InputError, match="lora_start_step"):
        load_training_config(ROOT / "configs" / RECIPES[0], ["lora_start_step=100", "steps_per_epoch=100", "epochs=1"])


def test_lora_and_loss_weights_reach_the_model(recipe, tiny):
    model, processor = tiny
    peft_model = prepare_for_training(model, recipe, trainable_token_ids(processor))
    lora = peft_model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16, 0.05)
    wrapped = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == {"q_proj", "v_proj"}
    assert not any("vision_tower" in name for name, m in peft_model.named_modules() if hasattr(m, "lora_A"))
    base = peft_model.get_base_model()
    assert (base.config.ce_loss_weight, base.config.bce_loss_weight, base.config.dice_loss_weight) == (1.0, 2.0, 0.5)
    language_model = base.language_model
    assert getattr(language_model, "is_activation_checkpointing", None) or language_model.is_gradient_checkpointing
    assert all(p.requires_grad for p in base.sam.mask_decoder.parameters())


class StubSource:
    """Stands in for a dataset reader: records what the mixer passed it."""

    def __init__(self, spec):
        self.spec = spec

    def __len__(self):
        return 100

    def draw(self, index, rng, max_conversations):
        return (self.spec.kind, max_conversations)


def test_data_mixer_gets_lisa_mix(recipe, monkeypatch):
    monkeypatch.setattr(training_datasets, "make_source", StubSource)
    mixer = training_datasets.build_training_dataset(recipe, length=4000)
    kinds = [source.spec.kind for source in mixer.sources]
    assert kinds == list(LISA_MIX)
    assert mixer.weights == pytest.approx([rate / 16 for rate in LISA_MIX.values()])
    assert mixer.conversations == 3
    specs = {source.spec.kind: source.spec for source in mixer.sources}
    for kind in LISA_MIX:  # LISA's default sub-dataset lists, spelled as LISA spells them
        assert lisa_tree.parse_subsets(specs[kind].subsets, kind) == list(lisa_tree.LISA_SUBSETS[kind])
        assert specs[kind].path == "dataset"
    assert specs["reason_seg"].explanatory_rate == 0.1
    drawn = Counter(mixer[i][0] for i in range(len(mixer)))
    for kind, rate in LISA_MIX.items():
        assert drawn[kind] / len(mixer) == pytest.approx(rate / 16, abs=0.03)
    assert {mixer[i][1] for i in range(20)} == {3}


def test_explanatory_rate_reaches_the_reason_seg_reader(recipe, monkeypatch, tmp_path):
    """The reader the mixer builds for reason_seg carries the recipe's 10 %."""
    captured = {}

    class Capture(training_datasets.ReasonSegTreeSource):
        def __init__(self, path, subsets=None, strict=False, explanatory_rate=0.0):
            captured.update(path=path, subsets=subsets, explanatory_rate=explanatory_rate)
            raise SystemExit  # stop before reading a tree that is not here

    monkeypatch.setattr(training_datasets, "ReasonSegTreeSource", Capture)
    spec = next(s for s in recipe.datasets if s.kind == "reason_seg")
    with pytest.raises(SystemExit):
        training_datasets.make_source(spec)
    assert captured == {"path": "dataset", "subsets": "ReasonSeg|train", "explanatory_rate": 0.1}


def test_recipe_launch_config_is_zero2_as_lisa(recipe):
    launch = yaml.safe_load((ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml").read_text())
    deepspeed = launch["deepspeed_config"]
    assert deepspeed["zero_stage"] == 2 and launch["mixed_precision"] == "bf16"
    assert deepspeed["gradient_accumulation_steps"] == recipe.grad_accumulation_steps
    assert deepspeed["gradient_clipping"] == recipe.max_grad_norm
    text = (ROOT / "configs" / RECIPES[0]).read_text()
    assert "configs/accelerate/deepspeed_zero2.yaml" in text and "reasonseg build" in text
