"""The projector from vision-tower features to the language model's embedding width."""

from __future__ import annotations

from torch import nn


def build_projector(projector_type: str, vision_hidden_size: int, text_hidden_size: int) -> nn.Module:
    """``linear``: one Linear (LLaVA v1, LISA). ``mlp2x_gelu``: Linear -> GELU -> Linear (LLaVA 1.5).

    Submodule names follow LLaVA's ``mm_projector`` numbering (``0`` / ``0, 2``) so checkpoints map one to one.
    """
    if projector_type == "linear":
        return nn.Sequential(nn.Linear(vision_hidden_size, text_hidden_size))
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(
            nn.Linear(vision_hidden_size, text_hidden_size), nn.GELU(), nn.Linear(text_hidden_size, text_hidden_size)
        )
    raise ValueError(f"unknown projector_type {projector_type!r}; use 'linear' or 'mlp2x_gelu'")
