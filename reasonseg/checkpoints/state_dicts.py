"""Reading checkpoint tensors without unpickling code and without holding more than one copy.

Safetensors files are memory-mapped; ``.bin``/``.pth`` pickles are read with ``torch.load(weights_only=True,
mmap=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a transformers-style checkpoint directory (sharded or not)."""
    for index_name in WEIGHT_INDEXES:
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [directory / shard for shard in shards]
    for name in SINGLE_WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(f"{directory} holds no model.safetensors or pytorch_model*.bin weights")


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one ``.safetensors`` / ``.bin`` / ``.pth`` file (memory-mapped where possible)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # old (non-zip) pickles cannot be memory-mapped
        loaded = _load_weights_only(path)
    except Exception as err:  # pickle.UnpicklingError and friends
        raise CheckpointError(f"{path} is not a plain tensor checkpoint ({type(err).__name__}); refusing to unpickle code") from None
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return loaded


def _load_weights_only(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a plain tensor checkpoint ({type(err).__name__}); refusing to unpickle code") from None


def iter_checkpoint_tensors(directory: Path):
    """Yield ``(key, tensor)`` shard by shard, so only one shard is mapped at a time."""
    for path in weight_files(directory):
        shard = load_tensor_file(path)
        yield from shard.items()
        del shard


class TensorIndex:
    """Look tensors of a checkpoint directory up by name without loading it all: safetensors files are opened per
    tensor, pickled shards memory-mapped (weights only) on first use."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._file_of: dict[str, Path] = {}
        self._open: dict[Path, dict] = {}
        for index_name in WEIGHT_INDEXES:
            index = self.directory / index_name
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self._file_of = {key: self.directory / name for key, name in weight_map.items()}
                break
        else:
            for path in weight_files(self.directory):
                for key in self._keys_of(path):
                    self._file_of[key] = path

    def _keys_of(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        return list(self._shard(path))

    def _shard(self, path: Path) -> dict:
        if path not in self._open:
            self._open[path] = load_tensor_file(path)
        return self._open[path]

    def __contains__(self, key: str) -> bool:
        return key in self._file_of

    def keys(self) -> list[str]:
        return list(self._file_of)

    def get(self, key: str) -> torch.Tensor:
        path = self._file_of[key]
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return handle.get_tensor(key)
        return self._shard(path)[key]

    def close(self) -> None:
        self._open.clear()
