"""Build a model without allocating weights, then assign loaded tensors to it one by one."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError


def build_on_meta(model_class, config) -> nn.Module:
    """Construct the model on the ``meta`` device (no memory, no random initialisation), choosing the attention
    implementation the way ``from_pretrained`` does, so converted and native loads compute identically."""
    with torch.device("meta"):
        return model_class._from_config(config)


def assign_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Assign ``tensors`` (cast to ``dtype`` where floating) in place of the meta parameters of ``model``.

    Parts already materialised (e.g. a vision tower loaded on its own) need no tensors. Raises a one-line
    :class:`CheckpointError` naming missing or unexpected keys. Non-persistent buffers that were left on ``meta``
    (rotary tables) are rebuilt on the CPU.
    """
    check_tensors_fit(model, tensors, "checkpoint")
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model.load_state_dict(cast, strict=False, assign=True)
    _tie_shared_sam_embedding(model)
    rebuild_meta_buffers(model)


def _tie_shared_sam_embedding(model: nn.Module) -> None:
    sam = getattr(model, "sam", None)
    if sam is not None:
        sam.prompt_encoder.shared_embedding.positional_embedding = sam.shared_image_embedding.positional_embedding


def rebuild_meta_buffers(model: nn.Module, device: str | torch.device = "cpu") -> None:
    """Recreate modules whose buffers are computed at construction (e.g. rotary ``inv_freq``) on a real device."""
    for name, module in list(model.named_modules()):
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            config = getattr(module, "config", None)
            if config is None:
                raise CheckpointError(f"cannot rebuild buffers of {name} ({type(module).__name__})")
            with torch.device(device):
                rebuilt = type(module)(config=config)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, rebuilt)


def check_tensors_fit(model, tensors, what: str) -> dict:
    """Raise one line when ``tensors`` name parameters ``model`` lacks, or leave some of its meta ones unfilled;
    returns the model's state dict."""
    current = model.state_dict()
    unexpected = sorted(set(tensors) - set(current))
    missing = sorted(k for k, v in current.items() if v.is_meta and k not in tensors)
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(parts))
    return current
