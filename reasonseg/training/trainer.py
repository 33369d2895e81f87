"""The training loop on accelerate: one CPU process here, ``accelerate launch`` for GPUs, nodes, DeepSpeed, FSDP.

Checkpoints hold what training changes (trainable weights, optimiser, scheduler, step) and are written atomically:
into a temporary directory, fsynced, then renamed to ``checkpoint-<step>``; a crash mid-write leaves only a
``.tmp-*`` directory, which resuming ignores. Data order is a pure function of (seed, step), so a resumed run
sees the same batches, and dropout is seeded per step, so it ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from ..checkpoints.loading import load_model_and_processor
from ..errors import CheckpointError, InputError
from .collate import ReasonSegCollator
from .config import TrainingConfig
from .datasets import build_training_dataset
from .model_setup import prepare_for_training, trainable_token_ids

STATE_FILE = "training_state.pt"
CONFIG_FILE = "training_config.json"


def warmup_then_linear_decay(warmup_steps: int, total_steps: int):
    """LISA's schedule: linear warm-up from 0 to the peak, then linear decay to 0 at the last step."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def build_optimizer(model, config: TrainingConfig):
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":  # plain SGD makes weights a linear function of gradients (used to check sharding)
        optimizer = torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise InputError(f"unknown optimizer {config.optimizer!r}; use adamw or sgd")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(config.warmup_steps, config.total_steps)
    )
    return optimizer, scheduler


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(output_dir: Path) -> Path | None:
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1])) if complete else None


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, config: TrainingConfig) -> Path:
    target = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = {
        "step": step,
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    with open(staging / STATE_FILE, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, default=list))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    for old in sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[: -config.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_trained_weights(path: Path, model) -> dict:
    """Copy a checkpoint's trainable tensors into ``model`` (built the same way); returns the whole state."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    parameters = dict(model.named_parameters())
    missing = sorted(set(state["trainable"]) - set(parameters))
    if missing:
        raise CheckpointError(f"{path} holds weights the model lacks (e.g. {missing[0]}); was it trained from another model?")
    for name, value in state["trainable"].items():
        parameters[name].data.copy_(value)
    return state


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    state = load_trained_weights(path, model)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def train(config: TrainingConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> Path:
    """Run (or resume) training; returns the output directory. ``stop_after`` ends early (tests, time limits)."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accumulation_steps,
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[config.precision],
    )
    set_seed(config.seed)
    model, processor = load_model_and_processor(config.model, precision="fp32", device=str(accelerator.device))
    model = prepare_for_training(model, config, trainable_token_ids(processor))
    optimizer, scheduler = build_optimizer(model, config)

    start_step = 0
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, model, optimizer, scheduler)
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")

    micro_batches = config.total_steps * config.grad_accumulation_steps
    dataset = build_training_dataset(config, micro_batches * config.batch_size * accelerator.num_processes)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=ReasonSegCollator(processor, config.max_length),
        num_workers=config.num_workers,
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loader = accelerator.skip_first_batches(loader, start_step * config.grad_accumulation_steps)

    model.train()
    step, started, last_log = start_step, time.time(), {}
    micro = 0
    for batch in loader:
        # dropout draws depend on (seed, micro-step, process) only, so a resumed run repeats them exactly
        torch.manual_seed(hash((config.seed, start_step * config.grad_accumulation_steps + micro, accelerator.process_index)) % 2**62)
        with accelerator.accumulate(model):
            output = model(**batch)
            accelerator.backward(output.loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step() if accelerator.sync_gradients else None
            optimizer.zero_grad()
        micro += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        last_log = {
            "step": step,
            "loss": float(output.loss.detach()),
            "ce": float(output.ce_loss.detach()),
            "mask_bce": float(output.mask_bce_loss.detach()) if output.mask_bce_loss is not None else 0.0,
            "mask_dice": float(output.mask_dice_loss.detach()) if output.mask_dice_loss is not None else 0.0,
            "lr": scheduler.get_last_lr()[0],
        }
        if progress and (step % config.log_every == 0 or step == config.total_steps):
            rate = micro * config.batch_size / max(time.time() - started, 1e-9)
            accelerator.print(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last_log.items())
                + f" samples/s={rate:.1f}"
            )
        if accelerator.is_main_process:
            with (output_dir / "log.jsonl").open("a") as log:
                log.write(json.dumps(last_log) + "\n")
        if accelerator.is_main_process and (step % config.save_every == 0 or step == config.total_steps):
            save_checkpoint(output_dir, step, accelerator.unwrap_model(model), optimizer, scheduler, config)
        if step >= config.total_steps or (stop_after is not None and step >= stop_after):
            break
    accelerator.wait_for_everyone()
    if math.isnan(last_log.get("loss", 0.0)):
        accelerator.print("warning: the loss is NaN; lower lr or use fp32/bf16")
    return output_dir
