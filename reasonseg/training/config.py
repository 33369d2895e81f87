"""Training configuration: one YAML file (plus ``key=value`` overrides) -> a typed, validated config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


from ..errors import InputError
from .precision import check_precision
from .stage_config import read_config_dict


@dataclass
class DatasetSpec:
    """kind: ``custom`` | ``reason_seg`` | ``sem_seg`` | ``refer_seg`` | ``vqa``; path: its folder or JSONL (for the
    LISA kinds: LISA's dataset folder); rate: relative sampling weight; subsets: sub-datasets of a LISA kind (a list
    or ``"a||b"``, default LISA's list); strict: stop at the first bad record instead of skipping it;
    explanatory_rate: share of ReasonSeg questions that ask for an explanation (LISA: 0.1); answer_style (``toy_world``
    only): ``varied`` (the world's answer templates) or ``referring`` (every one-target answer in the wording of stage
    2's referring turns plus its mask, "It is the small red star at (3, 6) [SEG].") or ``referring_and_lists`` (as
    ``referring``, and every several-target answer in the words of stage 2's list turns, "They are the small red star
    at (3, 6) [SEG] and the large blue star at (5, 2) [SEG]."); kinds (``toy_world`` only, instead of subsets): only
    these one-target query kinds (e.g. ``only_of_kind||closest``), asked whenever a scene offers one, as stage 2's
    ``focus_kinds`` asks them; target_filter (``toy_world`` only): keep only the one-target queries whose target
    is ``beside_same_colour`` (another shape of its colour within 8 % of the shorter side: where masks spill)."""

    kind: str
    path: str
    rate: float = 1.0
    split: str | None = None
    subsets: list[str] | str | None = None
    strict: bool = False
    explanatory_rate: float = 0.0
    answer_style: str = "varied"
    kinds: list[str] | str | None = None
    target_filter: str | None = None


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TrainingConfig:
    model: str = ""
    output_dir: str = "runs/reasonseg"
    datasets: list[DatasetSpec] = field(default_factory=list)
    epochs: int = 1
    steps_per_epoch: int = 100
    batch_size: int = 2
    grad_accumulation_steps: int = 1
    optimizer: str = "adamw"
    lr: float = 3e-4
    # learning rate of the LoRA adapters only (None: lr); the mask decoder, text_hidden_fcs and new token rows keep lr,
    # so a small LM can keep what its own pre-training taught while the new parts learn fast
    lora_lr: float | None = None
    # the LoRA adapters stay still until this step (their own warm-up starts there), while the [SEG] projection, the
    # mask decoder and the new token rows learn to read the LM as it is: their first, random gradients do not reach it
    lora_start_step: int = 0
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSpec = field(default_factory=LoraSpec)
    train_mask_decoder: bool = True
    # LISA keeps SAM's image encoder frozen; training it too helps where SAM is small or far from the data's domain
    # (the demo model's toy SAM), at the cost of the encoder's activations and gradients in memory
    train_sam_encoder: bool = False
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    # auxiliary, not LISA's (0: off): pull each [SEG] prompt towards SAM's point prompt at its target's innermost pixel
    seg_point_loss_weight: float = 0.0
    precision: str = "fp32"  # auto | fp32 | bf16 | fp16 (autocast); auto: bf16 where native (training/precision.py)
    gradient_checkpointing: bool = False
    # QLoRA: the frozen base model in 4- or 8-bit (bitsandbytes; CUDA only), LoRA and the trained parts in fp32
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    conversations_per_image: int = 3
    max_length: int = 512
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    tensorboard: bool = True  # event files under <output_dir>/tensorboard
    # periodic validation (LISA's forced-[SEG] protocol, gIoU/cIoU): a ReasonSeg folder, or KIND:PATH as in
    # `reasonseg eval` (reasonseg:DIR, custom:FILE.jsonl); every val_every steps (0: after the last step only)
    val_data: str | None = None
    val_every: int = 0
    val_batch_size: int = 4
    val_max_samples: int | None = None
    seed: int = 0
    num_workers: int = 0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        return asdict(self)


# the int and float fields, optional ones included (annotations are strings under `from __future__ import annotations`)
_NUMBER_FIELDS = {
    f.name: {"int": int, "float": float}[f.type.removesuffix(" | None")]
    for f in fields(TrainingConfig)
    if f.type.removesuffix(" | None") in ("int", "float")
}


def load_training_config(path: str | Path | None, overrides: list[str] = ()) -> TrainingConfig:
    """Read YAML, apply ``a.b=value`` overrides, validate keys (unknown keys are errors, not silently ignored)."""
    return _build(read_config_dict(path, overrides))


def _build(raw: dict) -> TrainingConfig:
    known = {f.name for f in fields(TrainingConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"unknown training config keys: {', '.join(unknown)}")
    values = dict(raw)
    try:
        values["datasets"] = [DatasetSpec(**spec) for spec in raw.get("datasets", [])]
        values["lora"] = LoraSpec(**raw.get("lora", {}))
    except TypeError as err:
        raise InputError(f"bad dataset or lora entry in the training config: {err}") from None
    if "betas" in values:
        values["betas"] = tuple(float(b) for b in values["betas"])
    for name, value in list(values.items()):
        number = _NUMBER_FIELDS.get(name)
        # YAML reads "3e-4" as a string; numbers are coerced by the field's type
        if number is not None and isinstance(value, str):
            try:
                values[name] = number(float(value))
            except ValueError:
                raise InputError(f"training config {name}: {value!r} is not a number") from None
    config = TrainingConfig(**values)
    _validate(config)
    if not config.model:
        raise InputError("the training config names no model: set model: PATH_OR_HUB_ID")
    if not config.datasets:
        raise InputError("the training config lists no datasets")
    return config


def _validate(config: TrainingConfig) -> None:
    """Checks of the non-dataset fields that need no model or data (one-line errors saying what to set)."""
    check_precision(config.precision, ("fp32", "bf16", "fp16"), "training config")
    if config.load_in_4bit and config.load_in_8bit:
        raise InputError("training config: set one of load_in_4bit and load_in_8bit, not both")
    for name in ("steps_per_epoch", "epochs", "batch_size", "grad_accumulation_steps", "save_every", "log_every",
                 "val_batch_size"):
        if int(getattr(config, name)) < 1:
            raise InputError(f"training config {name}: {getattr(config, name)} must be at least 1")
    if config.lora_lr is not None and config.lora_lr <= 0:
        raise InputError(f"training config lora_lr: {config.lora_lr} must be above 0 (or left out to use lr)")
    if not 0 <= config.lora_start_step < config.total_steps:
        raise InputError(f"training config lora_start_step: {config.lora_start_step} must be 0 or more and below the "
                         f"run's {config.total_steps} steps")
    if config.val_every < 0:
        raise InputError(f"training config val_every: {config.val_every} must be 0 (only at the end) or more")
    if config.val_max_samples is not None and config.val_max_samples < 1:
        raise InputError("training config val_max_samples must be at least 1 (or left out for the whole set)")
    if config.val_every and not config.val_data:
        raise InputError("training config sets val_every but no val_data: add val_data: PATH_TO_REASONSEG_VAL")
