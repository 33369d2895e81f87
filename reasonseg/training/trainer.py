"""The training loop on accelerate: one CPU process here, ``accelerate launch`` for GPUs, nodes, DeepSpeed, FSDP.

Checkpoints hold what training changes (trainable weights, optimiser, scheduler, step) and are written atomically:
into a temporary directory, fsynced, then renamed to ``checkpoint-<step>``; a crash mid-write leaves only a
``.tmp-*`` directory, which resuming ignores. Data order is a pure function of (seed, step), so a resumed run
sees the same batches, and dropout is seeded per global micro-batch, so it ends with the same weights as an
uninterrupted one -- and N processes with batch b end as one process with batch b and N times the accumulation.

Under several processes every one computes its micro-batch's loss as a one-process run would (CE a token mean over
that micro-batch's supervised tokens, mask terms a mean over its masks) and gradients are averaged over processes
and accumulation steps alike, exactly as a one-process run averages over its accumulation steps.

Logging: ``log.jsonl`` (train and validation records), TensorBoard scalars under ``tensorboard/``, a tqdm bar
showing the loss terms, and ``run.json`` (processes, distributed type, global batch).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..checkpoints.loading import load_model_and_processor
from ..errors import CheckpointError, InputError
from .collate import ReasonSegCollator
from .config import TrainingConfig
from .datasets import build_training_dataset
from .model_setup import check_quantized_training, prepare_for_training, trainable_token_ids
from .precision import accelerate_mixed_precision
from .validation import ValidationSet, validate

STATE_FILE = "training_state.pt"
CONFIG_FILE = "training_config.json"
RUN_INFO_FILE = "run.json"


def warmup_then_linear_decay(warmup_steps: int, total_steps: int, start_step: int = 0):
    """LISA's schedule: linear warm-up from 0 to the peak, then linear decay to 0 at the last step; 0 before
    ``start_step``, where the warm-up then begins."""

    def factor(step: int) -> float:
        if step < start_step:
            return 0.0
        step -= start_step
        if warmup_steps and step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - start_step - step) / max(1, total_steps - start_step - warmup_steps))

    return factor


def parameter_groups(model, config: TrainingConfig) -> list[dict]:
    """One group at ``lr``; with ``lora_lr`` or ``lora_start_step`` set, the LoRA adapters form a second group (at
    ``lora_lr``, else ``lr``)."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.lora_lr is None and not config.lora_start_step:
        return [{"params": [p for _, p in trained]}]
    lora = [p for name, p in trained if "lora_" in name]
    if not lora:
        raise InputError("training config sets lora_lr or lora_start_step but the model has no trained LoRA adapters; "
                         "leave them out")
    rest = [p for name, p in trained if "lora_" not in name]
    return [{"params": rest}, {"params": lora, "lr": config.lora_lr or config.lr}]


def build_optimizer(model, config: TrainingConfig):
    parameters = parameter_groups(model, config)
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":  # plain SGD makes weights a linear function of gradients (used to check sharding)
        optimizer = torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise InputError(f"unknown optimizer {config.optimizer!r}; use adamw or sgd")
    schedules = [warmup_then_linear_decay(config.warmup_steps, config.total_steps)]
    if len(parameters) == 2:
        schedules.append(warmup_then_linear_decay(config.warmup_steps, config.total_steps, config.lora_start_step))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    return optimizer, scheduler


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(output_dir: Path) -> Path | None:
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1])) if complete else None


def checkpoint_to_resume(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from (None: a fresh start). Refuses to start a new run over an old run's
    checkpoints, and to resume from a folder whose checkpoints are all incomplete."""
    if not (output_dir.is_dir() and any(output_dir.glob("checkpoint-*"))):
        return None
    if not resume:
        raise InputError(f"{output_dir} already holds checkpoints; pass --resume to continue or choose another output_dir")
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        raise InputError(f"{output_dir} holds no complete checkpoint to resume from; remove it or start without --resume")
    return checkpoint


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


def load_init_weights(init_from: Path, model, model_class, what: str, may_lack=lambda name: False,
                      extra_file: str | None = None, adapt_state=None) -> None:
    """Start a new phase from an earlier run: copy the weights of a saved model folder (``model_class``
    ``save_pretrained``) or of a ``checkpoint-<step>`` folder into ``model``, which this phase's config built.
    ``may_lack`` names the parameters this phase adds (e.g. training heads) that the saved model need not hold;
    ``extra_file``, a safetensors file that may lie in the model folder, holds those of them that were trained;
    ``adapt_state`` maps a saved model's state dict onto this phase's layout (e.g. a deeper LM)."""
    if (init_from / "config.json").is_file():
        state = model_class.from_pretrained(init_from).state_dict()
        if adapt_state is not None:
            state = adapt_state(state)
        if extra_file and (init_from / extra_file).is_file():
            wanted = dict(model.named_parameters())
            state.update({name: value for name, value in load_file(str(init_from / extra_file)).items() if name in wanted})
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise InputError(f"init_from {init_from} was built with other sizes than this config "
                             f"({str(error).splitlines()[1].strip()}); use the config it was trained with") from None
        missing = [name for name in missing if not may_lack(name)]
        if missing or unexpected:
            raise InputError(f"init_from {init_from} is not a {what} of this config's layout "
                             f"(e.g. {(missing or unexpected)[0]}); use the config it was trained with")
    elif (init_from / STATE_FILE).is_file():
        if adapt_state is not None:  # a checkpoint holds trainable weights by name only: nothing to map them with
            raise InputError(f"init_from {init_from}: this config reshapes the {what} it starts from (e.g. "
                             "repeat_text_layers), which needs a saved model folder (a run's `model`), not a training "
                             "checkpoint")
        load_trained_weights(init_from, model)
    else:
        raise InputError(f"init_from {init_from} holds neither a saved model (config.json) nor a training checkpoint")


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    state = load_trained_weights(path, model)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def new_accelerator(precision: str, **kwargs) -> Accelerator:
    """``Accelerator(**kwargs)`` at a config's ``precision`` (``auto`` resolved for this machine, see
    :mod:`.precision`), that may follow another run in the same process.

    accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another precision ("has already
    been initialized"), e.g. a pre-training stage at fp32 followed by ``train`` at bf16 in one Python session. A
    single-process run starts that state afresh; launched multi-process runs keep it (it holds their process group).
    """
    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1") or 1) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(mixed_precision=accelerate_mixed_precision(precision), **kwargs)


def _make_accelerator(config: TrainingConfig) -> Accelerator:
    """accelerate's state for this launch. Two fixes over a bare ``Accelerator()``:

    * under torchrun / ``accelerate launch`` with several processes on a machine without an accelerator, a bare
      ``Accelerator()`` sets every process up as a lone single-process run (no gloo group, no gradient averaging):
      ``cpu=True`` makes them the MULTI_CPU group they are;
    * parameters that a batch does not reach (the mask decoder on a VQA-only batch) must not stall DDP's reduction.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    accelerator = new_accelerator(
        config.precision,
        gradient_accumulation_steps=config.grad_accumulation_steps,
        cpu=world > 1 and not has_accelerator,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if world > 1 and accelerator.num_processes != world:
        raise InputError(
            f"launched as {world} processes but accelerate set up {accelerator.num_processes}; "
            "check the accelerate config (distributed_type) or launch with torchrun"
        )
    if world == 1 and os.environ.get("MASTER_ADDR") and "ACCELERATE_USE_CPU" in os.environ and "RANK" not in os.environ:
        # `accelerate launch` with distributed_type MULTI_CPU and no mpirun starts exactly one process
        warnings.warn(
            "accelerate launched a single process although the config asks for several (MULTI_CPU needs mpirun); "
            "for several CPU processes use configs/accelerate/cpu_2proc.yaml or torchrun --nproc_per_node N",
            stacklevel=2,
        )
    return accelerator


def _mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=accelerator.device)
    reduced = accelerator.reduce(stacked, reduction="mean")
    return dict(zip(values, reduced.tolist()))


class _TensorBoard:
    """Scalars under ``<output_dir>/tensorboard`` (main process only; a no-op when switched off)."""

    def __init__(self, directory: Path, enabled: bool, start_step: int):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                                 "(or set tensorboard=false)") from None
            # purge_step drops events a killed run wrote after its last checkpoint, so a resumed curve is clean
            self.writer = SummaryWriter(str(directory), purge_step=start_step + 1 if start_step else None)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and name not in ("step", "count"):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _append_log(output_dir: Path, record: dict) -> None:
    with (output_dir / "log.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")


def _truncate_log(output_dir: Path, step: int) -> None:
    """Drop the log lines a killed run wrote after the checkpoint it resumes from (they are written again)."""
    path = output_dir / "log.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
    path.write_text("".join(line + "\n" for line in kept))


def train(config: TrainingConfig, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> Path:
    """Run (or resume) training; returns the output directory. ``stop_after`` ends early (tests, time limits).

    ``log.jsonl`` gets one ``{"event": "train", "step", "loss", "ce", "mask_bce", "mask_dice", "seg_point", "lr"}``
    line per optimiser step (loss terms averaged over the step's micro-batches and processes) and one
    ``{"event": "validation", "step", "giou", "ciou", "count", ...}`` line per validation.
    """
    output_dir = Path(config.output_dir)
    checkpoint = checkpoint_to_resume(output_dir, resume)  # before the model loads: a wrong folder fails at once
    accelerator = _make_accelerator(config)
    check_quantized_training(config, str(accelerator.device))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    val_set = ValidationSet.load(config.val_data, config.val_max_samples) if config.val_data else None
    # the data before the model: a wrong dataset entry fails in seconds, not after a 7B model has loaded
    micro_batches = config.total_steps * config.grad_accumulation_steps
    dataset = build_training_dataset(config, micro_batches * config.batch_size * accelerator.num_processes)
    try:  # any supported checkpoint: reasonseg, LISA, Sa2VA (original layout or converted)
        model, processor = load_model_and_processor(
            config.model, precision="fp32", device=str(accelerator.device),
            load_in_4bit=config.load_in_4bit, load_in_8bit=config.load_in_8bit,
        )
    except CheckpointError as err:
        raise CheckpointError(f"training config model {config.model!r}: {err}") from None
    model = prepare_for_training(model, config, trainable_token_ids(processor))
    optimizer, scheduler = build_optimizer(model, config)

    start_step = 0
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, model, optimizer, scheduler)
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")

    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=ReasonSegCollator(processor, config.max_length),
        num_workers=config.num_workers,
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loader = accelerator.skip_first_batches(loader, start_step * config.grad_accumulation_steps)

    is_main = accelerator.is_main_process
    if is_main:
        _truncate_log(output_dir, start_step)  # a fresh start drops what a run killed before its first checkpoint logged
        (output_dir / RUN_INFO_FILE).write_text(json.dumps({
            "num_processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type).split(".")[-1],
            "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
            "global_batch": config.batch_size * config.grad_accumulation_steps * accelerator.num_processes,
            "start_step": start_step,
        }, indent=2))
    board = _TensorBoard(output_dir / "tensorboard", config.tensorboard and is_main, start_step)
    bar = tqdm(total=config.total_steps, initial=start_step, disable=not (progress and is_main),
               desc="train", unit="step", dynamic_ncols=True)

    def run_validation(step: int) -> None:
        summary = validate(model, processor, val_set, accelerator, config.val_batch_size)
        record = {"event": "validation", "step": step, **summary}
        if is_main:
            _append_log(output_dir, record)
            board.scalars("val", summary, step)
            if progress:
                bar.write(f"step {step} validation: gIoU={summary['giou']:.4f} cIoU={summary['ciou']:.4f} "
                          f"({summary['count']} masks)")

    model.train()
    step, started, last_log = start_step, time.time(), {}
    micro, terms = 0, []
    for batch in loader:
        # dropout draws depend on (seed, global micro-batch index) only: a resumed run repeats them, and so does a
        # run over more processes (process p's m-th micro-batch is batch m * world + p of a one-process run)
        global_micro = (start_step * config.grad_accumulation_steps + micro) * accelerator.num_processes
        torch.manual_seed(hash((config.seed, global_micro + accelerator.process_index)) % 2**62)
        with accelerator.accumulate(model):
            output = model(**batch)
            accelerator.backward(output.loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step() if accelerator.sync_gradients else None
            optimizer.zero_grad()
        micro += 1
        terms.append([
            float(output.loss.detach()),
            float(output.ce_loss.detach()),
            float(output.mask_bce_loss.detach()) if output.mask_bce_loss is not None else 0.0,
            float(output.mask_dice_loss.detach()) if output.mask_dice_loss is not None else 0.0,
            float(output.seg_point_loss.detach()) if output.seg_point_loss is not None else 0.0,
        ])
        if not accelerator.sync_gradients:
            continue
        step += 1
        means = _mean_over_processes(accelerator, dict(zip(("loss", "ce", "mask_bce", "mask_dice", "seg_point"),
                                                           np.mean(terms, axis=0).tolist())))
        terms = []
        last_log = {"event": "train", "step": step, **means, "lr": scheduler.get_last_lr()[0]}
        if is_main:
            _append_log(output_dir, last_log)
            board.scalars("train", last_log, step)
            bar.set_postfix({k: f"{last_log[k]:.4g}" for k in ("loss", "ce", "mask_bce", "mask_dice", "lr")},
                            refresh=False)
            bar.update(1)
            if progress and (step % config.log_every == 0 or step == config.total_steps):
                rate = micro * config.batch_size * accelerator.num_processes / max(time.time() - started, 1e-9)
                bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in last_log.items() if k != "event") + f" samples/s={rate:.1f}")
        stopping = stop_after is not None and step >= stop_after  # saved too, so --resume goes on from this step
        if is_main and (step % config.save_every == 0 or step == config.total_steps or stopping):
            save_checkpoint(output_dir, step, accelerator.unwrap_model(model), optimizer, scheduler, config)
        last = step >= config.total_steps
        if val_set is not None and ((config.val_every and step % config.val_every == 0) or last):
            run_validation(step)
        if last or stopping:
            break
    bar.close()
    board.close()
    accelerator.wait_for_everyone()
    if math.isnan(last_log.get("loss", 0.0)):
        accelerator.print("warning: the loss is NaN; lower lr or use fp32/bf16")
    return output_dir
