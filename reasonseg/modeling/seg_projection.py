"""The [SEG] projection: a language-model hidden state -> one SAM sparse prompt embedding."""

from __future__ import annotations

import torch
from torch import nn


class SegProjection(nn.Module):
    """Linear(hidden, hidden) -> ReLU -> Linear(hidden, prompt_dim), as LISA's ``text_hidden_fcs``."""

    def __init__(self, hidden_size: int, prompt_dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, prompt_dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[n, hidden] -> [n, prompt_dim]``."""
        return self.layers(hidden_states.to(self.layers[2].bias.dtype))
