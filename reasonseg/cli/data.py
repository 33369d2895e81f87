"""`reasonseg data`: dataset utilities (`render-masks`: write a ReasonSeg folder's ground truth as PNGs)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="dataset utilities")
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    render = commands.add_parser(
        "render-masks",
        help="write <id>/labeled_mask.png (0 background, 255 target, 128 ignore), target_mask.png, ignore_mask.png",
    )
    render.add_argument("dir", metavar="DIR", help="ReasonSeg folder of <id>.jpg|png + <id>.json")
    render.add_argument("--out", required=True, help="output folder")
    render.add_argument("--strict", action="store_true", help="stop with an error at the first problem")
    render.set_defaults(func=run_render_masks)


def run_render_masks(args) -> int:
    from ..data.reason_seg import render_masks

    problems: list[str] = []
    written = render_masks(args.dir, args.out, strict=args.strict, problems=problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"wrote masks of {len(written)} sample(s) under {args.out}")
    return 0
