"""The model used when none is named.

Until the trained demo checkpoint is bundled (issue: demo model), this is a tiny *untrained* model built from a
config and cached under ``~/.cache/reasonseg/tiny-untrained``: it exercises the whole pipeline offline but its answers
and masks are random. Real images need a real checkpoint: ``--model xinlai/LISA-7B-v1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

BUNDLED_DEMO = Path(__file__).resolve().parent / "assets" / "demo_model"


def default_model_path() -> Path:
    if (BUNDLED_DEMO / "config.json").is_file():
        return BUNDLED_DEMO
    target = Path.home() / ".cache" / "reasonseg" / "tiny-untrained"
    if not (target / "config.json").is_file():
        from .checkpoints.convert import save_native
        from .modeling.tiny import build_tiny_model

        model, processor = build_tiny_model(seed=0)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        save_native(model, processor, target)
    print(
        "note: no --model given and no trained demo model is bundled yet; using a tiny UNTRAINED model "
        "(random answers). Pass --model PATH_OR_HUB_ID (e.g. xinlai/LISA-7B-v1) for real results.",
        file=sys.stderr,
    )
    return target
