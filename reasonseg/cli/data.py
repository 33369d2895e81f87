"""`reasonseg data`: dataset utilities.

* ``render-masks``: write a ReasonSeg folder's ground truth as PNGs;
* ``check``: list the datasets found in LISA's training-data tree, their sample counts, and what is missing or
  malformed, reading index files only (no image is opened).
"""

from __future__ import annotations

import sys
from pathlib import Path


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

    check = commands.add_parser(
        "check",
        help="list the datasets of LISA's tree (ade20k, refer_seg/refcoco, llava_dataset, reason_seg, ...), "
        "their sample counts and what is missing or malformed",
    )
    check.add_argument("--dataset-dir", required=True, help="LISA's dataset folder (its --dataset_dir)")
    check.add_argument(
        "--datasets",
        help="comma-separated kinds (sem_seg, refer_seg, vqa, reason_seg) or names (ade20k, refcocog|google, "
        "ReasonSeg|train, ...) to check; these must then all be present. Default: every known dataset",
    )
    check.add_argument("--max-problems", type=int, default=10, help="problem lines shown per dataset (default 10)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=run_check)


def run_render_masks(args) -> int:
    from ..data.reason_seg import render_masks

    problems: list[str] = []
    written = render_masks(args.dir, args.out, strict=args.strict, problems=problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"wrote masks of {len(written)} sample(s) under {args.out}")
    return 0


def run_check(args) -> int:
    """Exit 0 when every dataset found is usable without problems (and every one named is found), else 1."""
    from ..data.lisa_tree import check_tree, format_report, report_json

    names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else None
    dataset_dir = Path(args.dataset_dir)
    checks = check_tree(dataset_dir, names)
    print(report_json(dataset_dir, checks) if args.json else format_report(dataset_dir, checks, args.max_problems))
    failed = any(c.status in ("problems", "unusable") for c in checks)
    if names is not None:
        failed = failed or any(c.status == "missing" for c in checks)
    elif all(c.status == "missing" for c in checks):
        failed = True
    return 1 if failed else 0
