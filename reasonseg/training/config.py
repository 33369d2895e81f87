"""Training configuration: one YAML file (plus ``key=value`` overrides) -> a typed, validated config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import InputError


@dataclass
class DatasetSpec:
    """kind: ``custom`` | ``reason_seg``; path: its folder or JSONL; rate: relative sampling weight."""

    kind: str
    path: str
    rate: float = 1.0
    split: str | None = None


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
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraSpec = field(default_factory=LoraSpec)
    train_mask_decoder: bool = True
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    conversations_per_image: int = 3
    max_length: int = 512
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(value: str):
    return yaml.safe_load(value)


def load_training_config(path: str | Path | None, overrides: list[str] = ()) -> TrainingConfig:
    """Read YAML, apply ``a.b=value`` overrides, validate keys (unknown keys are errors, not silently ignored)."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"training config {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise InputError(f"override {override!r} should look like key=value (e.g. lr=1e-4)")
        target = raw
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = _coerce(value)
    return _build(raw)


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
    defaults = TrainingConfig()
    for name, value in list(values.items()):
        default = getattr(defaults, name)
        # YAML reads "3e-4" as a string; numbers are coerced by the field's type
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            try:
                values[name] = type(default)(float(value))
            except ValueError:
                raise InputError(f"training config {name}: {value!r} is not a number") from None
    config = TrainingConfig(**values)
    if not config.model:
        raise InputError("the training config names no model: set model: PATH_OR_HUB_ID")
    if not config.datasets:
        raise InputError("the training config lists no datasets")
    return config
