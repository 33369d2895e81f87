"""Foreign checkpoints in, native reasonseg checkpoints (safetensors + processor, self-contained) out."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError


def save_native(model, processor, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write model + processor (and ``extra_files``: name -> text) atomically: into a temporary sibling, then
    renamed into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir} exists and is not empty; choose a new --out directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        processor.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def convert_lisa_checkpoint(
    source: str | Path, out_dir: str | Path, vision_tower: str | None = None, dtype: torch.dtype | None = None
) -> Path:
    """``reasonseg convert --from-lisa``: the CLIP tower is included so the result needs nothing else.

    ``dtype`` defaults to the checkpoint's storage dtype (bf16 for the released LISA models).
    """
    from .lisa import load_lisa_checkpoint
    from .loading import read_config

    if dtype is None:
        stored = read_config(Path(source)).get("torch_dtype", "float32")
        dtype = getattr(torch, stored, torch.float32)
    model, processor = load_lisa_checkpoint(source, dtype=dtype, vision_tower=vision_tower)
    return save_native(model, processor, out_dir)
