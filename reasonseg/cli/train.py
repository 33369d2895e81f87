"""`reasonseg train --config CONFIG.yaml [key=value ...] [--resume] [--stop-after STEP]` (one process, or under `accelerate launch`)."""

from __future__ import annotations

import os


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune with LoRA (LISA recipe) on your datasets")
    parser.add_argument("--config", default=None, help="training YAML (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    # the same flag as `reasonseg pretrain` (--max-steps-now: its first name, kept)
    parser.add_argument("--stop-after", "--max-steps-now", dest="stop_after", type=int, default=None, metavar="STEP",
                        help="stop cleanly after this step; continue with --resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or periodic log lines")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-4 lora.r=16 val_every=500")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..training.config import load_training_config
    from ..training.trainer import train

    config = load_training_config(args.config, args.overrides)
    output = train(config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under a multi-process launch, say it once
        print(f"checkpoints in {output}; merge with: reasonseg export --checkpoint {output} --out DIR")
    return 0
