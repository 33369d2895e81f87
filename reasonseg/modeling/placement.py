"""Where a part runs, also when accelerate's big-model dispatch offloads it (its weights then sit on ``meta``)."""

from __future__ import annotations

import torch
from torch import nn


def execution_device(module: nn.Module) -> torch.device:
    """The device a module computes on: its accelerate hook's execution device, else its first real parameter's."""
    for part in module.modules():
        hook = getattr(part, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
        for parameter in part.parameters(recurse=False):
            if parameter.device.type != "meta":
                return parameter.device
    return torch.device("cpu")


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of a module's weights (quantised layers report their compute dtype's neighbours)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32
