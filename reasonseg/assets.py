"""The model used when none is named.

That is the demo model bundled under ``reasonseg/assets/demo_model`` (docs/demo_model.md): trained here on the
shapes world, it knows nothing else. Its measured held-out figures ship beside it (``eval_metrics.json``). When the
folder is missing (an install without package data), a tiny *untrained* model built from a config and cached under
``~/.cache/reasonseg/tiny-untrained`` stands in: it exercises the whole pipeline offline but answers at random.
Real images need a real checkpoint: ``--model xinlai/LISA-7B-v1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

BUNDLED_DEMO = Path(__file__).resolve().parent / "assets" / "demo_model"


def default_model_path() -> Path:
    if (BUNDLED_DEMO / "config.json").is_file():
        print(
            "note: no --model given; using the bundled demo model, which knows only the shapes world of "
            "docs/demo_model.md. Pass --model PATH_OR_HUB_ID (e.g. xinlai/LISA-7B-v1) for real images.",
            file=sys.stderr,
        )
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
        "note: no --model given and no demo model is bundled in this install; using a tiny UNTRAINED model "
        "(random answers). Pass --model PATH_OR_HUB_ID (e.g. xinlai/LISA-7B-v1) for real results.",
        file=sys.stderr,
    )
    return target
