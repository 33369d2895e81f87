"""`reasonseg eval-masks`: gIoU / cIoU of a folder of predicted masks against a ReasonSeg-format folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-masks",
        help="score predicted masks (<id>.npy or <id>.png) against a ReasonSeg folder (gIoU, cIoU)",
    )
    parser.add_argument("--pred-dir", required=True, help="folder of <id>.npy (bool/0-1/logits) or <id>.png masks")
    parser.add_argument("--gt-dir", required=True, help="ReasonSeg folder of <id>.jpg|png + <id>.json")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the full result (per sample) here")
    parser.add_argument("--strict", action="store_true", help="stop with an error at the first problem")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.mask_eval import evaluate_mask_folder

    result = evaluate_mask_folder(args.pred_dir, args.gt_dir, strict=args.strict)
    for problem in result["problems"]:
        print(problem, file=sys.stderr)
    print(f"gIoU {result['giou']:.4f}")
    print(f"cIoU {result['ciou']:.4f}")
    print(f"count {result['count']}")
    for kind, numbers in result["by_query_kind"].items():
        print(f"  {kind} queries: gIoU {numbers['giou']:.4f}  cIoU {numbers['ciou']:.4f}  count {numbers['count']}")
    if result["problems"]:
        print(f"{len(result['problems'])} problem(s), listed on stderr", file=sys.stderr)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 1 if args.strict and result["problems"] else 0
