"""Foreign checkpoints in, native reasonseg checkpoints (safetensors + processor, self-contained) out."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import CheckpointError


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to write into, renamed into place when the block ends without error
    (removed if it fails), so a crash never leaves a half-written checkpoint behind. ``out_dir`` must be new or
    empty."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir} exists and is not empty; choose a new --out directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_native(model, processor, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write model + processor (and ``extra_files``: name -> text) atomically (see ``staged_output``)."""
    with staged_output(out_dir) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        processor.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return Path(out_dir)


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
