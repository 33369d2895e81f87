"""`reasonseg average`: the element-wise (weighted) mean of checkpoints fine-tuned from one model.

Averaging the weights of runs that share an ancestor (a "model soup", or the last phases of one training) often
scores better than any one of them, at no inference cost. Only native reasonseg checkpoints of one architecture
and one processor can be averaged: the configs must agree (up to the recorded dtype and library version), every
tensor must exist in every source with one shape, integer tensors must be equal, and the tokenizer and image
processor files must be identical, because the mean of models with different vocabularies means nothing.

It streams: the first source is read one shard at a time, each other source's partner tensors are read as they
are needed, and each averaged shard is written before the next is read. Floating tensors are summed in (at
least) fp32 and stored back in the first source's dtype.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from .convert import staged_output
from .loading import checkpoint_kind, locate_checkpoint, read_config
from .state_dicts import WEIGHT_INDEXES, TensorIndex, load_tensor_file, weight_files

PROVENANCE_FILE = "averaged_from.json"
# config keys that may differ between sources that are still one architecture
CONFIG_KEYS_IGNORED = ("transformers_version", "dtype", "torch_dtype", "_name_or_path")
# what a saved processor file records about where it was loaded from, not what it does
PROCESSOR_KEYS_IGNORED = ("is_local", "local_files_only", "name_or_path", "_name_or_path", "transformers_version")
# the processor: tokenizer, image transforms, conversation template
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "reasonseg_processor.json",
    "chat_template.jinja",
    "chat_template.json",
)
COPIED_FILES = ("config.json", "generation_config.json") + PROCESSOR_FILES


def average_checkpoints(sources: list[str | Path], out_dir: str | Path, weights: list[float] | None = None) -> Path:
    """Write the weighted mean of ``sources`` (native reasonseg checkpoint directories or hub ids) to ``out_dir``.

    ``weights`` (one positive number per source, normalised to sum to 1) default to equal weights. The config and
    processor files are the first source's; ``averaged_from.json`` records the sources and weights.
    """
    if len(sources) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    weights = _normalised(weights, len(sources))
    directories = [locate_checkpoint(source) for source in sources]
    _check_compatible(directories)
    first, others = directories[0], [TensorIndex(directory) for directory in directories[1:]]
    files = weight_files(first)
    if any(path.suffix != ".safetensors" for path in files):
        raise CheckpointError(f"{first} stores its weights as pickles; list a safetensors checkpoint first")
    _check_same_tensor_names(TensorIndex(first), others)
    with staged_output(out_dir) as staging:
        for path in files:
            shard = load_tensor_file(path)
            averaged = {key: _mean(key, tensor, others, weights) for key, tensor in shard.items()}
            save_file(averaged, str(staging / path.name), metadata={"format": "pt"})
            del shard, averaged
        for name in COPIED_FILES + WEIGHT_INDEXES:
            if (first / name).is_file():
                shutil.copyfile(first / name, staging / name)
        provenance = {"sources": [str(source) for source in sources], "weights": weights}
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return Path(out_dir)


def _normalised(weights: list[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise CheckpointError(f"{len(weights)} weights for {count} checkpoints; give one weight per checkpoint")
    if any(not weight > 0 for weight in weights):
        raise CheckpointError(f"weights must be positive numbers, got {weights}")
    total = sum(weights)
    return [weight / total for weight in weights]


def _comparable_config(directory: Path) -> dict:
    config = read_config(directory)
    kind = checkpoint_kind(config)
    if kind != "reasonseg":
        raise CheckpointError(f"{directory} is a {kind} checkpoint; convert it first (reasonseg convert ... --out DIR)"
                              " and average the converted directories")
    return {key: value for key, value in config.items() if key not in CONFIG_KEYS_IGNORED}


def _processor_file(directory: Path, name: str):
    path = directory / name
    if not path.is_file():
        return None
    if path.suffix == ".json":
        content = json.loads(path.read_text())
        if isinstance(content, dict):
            content = {key: value for key, value in content.items() if key not in PROCESSOR_KEYS_IGNORED}
        return content
    return path.read_bytes()


def _check_compatible(directories: list[Path]) -> None:
    first = directories[0]
    reference = _comparable_config(first)
    reference_processor = {name: _processor_file(first, name) for name in PROCESSOR_FILES}
    for directory in directories[1:]:
        config = _comparable_config(directory)
        if config != reference:
            differing = sorted(key for key in reference.keys() | config.keys() if reference.get(key) != config.get(key))
            raise CheckpointError(f"{directory} and {first} differ in config ({', '.join(differing)}); "
                                  "only checkpoints of one architecture can be averaged")
        for name in PROCESSOR_FILES:
            if _processor_file(directory, name) != reference_processor[name]:
                raise CheckpointError(f"{directory} and {first} differ in {name}; only checkpoints fine-tuned from one "
                                      "model with one tokenizer and image processor can be averaged")


def _check_same_tensor_names(first: TensorIndex, others: list[TensorIndex]) -> None:
    """Before any tensor is read: every source holds exactly the first one's tensor names."""
    names = set(first.keys())
    for other in others:
        missing = sorted(names - set(other.keys()))
        if missing:
            raise CheckpointError(f"{other.directory} lacks tensor {missing[0]}; only checkpoints of one architecture "
                                  "can be averaged")
        extra = sorted(set(other.keys()) - names)
        if extra:
            raise CheckpointError(f"{other.directory} holds tensors {first.directory} lacks ({', '.join(extra[:3])}); "
                                  "only checkpoints of one architecture can be averaged")


def _mean(key: str, tensor: torch.Tensor, others: list[TensorIndex], weights: list[float]) -> torch.Tensor:
    partners = []
    for other in others:
        partner = other.get(key)
        if partner.shape != tensor.shape:
            raise CheckpointError(f"tensor {key} is {tuple(partner.shape)} in {other.directory} but "
                                  f"{tuple(tensor.shape)} in the first checkpoint; they cannot be averaged")
        partners.append(partner)
    if not tensor.is_floating_point():
        if any(not torch.equal(tensor, partner) for partner in partners):
            raise CheckpointError(f"integer tensor {key} differs between the checkpoints; they cannot be averaged")
        return tensor.clone()
    accumulator_dtype = torch.promote_types(tensor.dtype, torch.float32)
    total = tensor.to(accumulator_dtype) * weights[0]
    for partner, weight in zip(partners, weights[1:]):
        total += partner.to(accumulator_dtype) * weight
    return total.to(tensor.dtype).contiguous()
