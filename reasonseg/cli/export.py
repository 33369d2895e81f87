"""`reasonseg export --checkpoint RUN_DIR --out DIR`: merge LoRA and write a standard reasonseg checkpoint."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="merge a training run's LoRA into a standalone checkpoint")
    parser.add_argument("--checkpoint", required=True, help="the run's output_dir (or one checkpoint-<step> in it)")
    parser.add_argument("--out", required=True)
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..training.export import export_run

    source = Path(args.checkpoint)
    run_dir, checkpoint = (source.parent, source) if source.name.startswith("checkpoint-") else (source, None)
    print(f"wrote {export_run(run_dir, args.out, checkpoint)}")
    return 0
