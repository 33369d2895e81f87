"""`reasonseg eval`: gIoU / cIoU of a model on a dataset, LISA's forced-[SEG] protocol beside free answers.

Runs as one process or under ``accelerate launch`` (each process loads the model and scores every world-th item).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import add_model_arguments, load_segmenter


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a model on ReasonSeg / refCOCO-family / custom data: LISA's protocol and free answers",
    )
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="KIND:PATH",
                        help="reasonseg:, refcoco:, refcoco+:, refcocog:, grefcoco: or custom: followed by a path")
    parser.add_argument("--split", default=None, help="a split sub-folder (ReasonSeg) or split name (refer; val)")
    parser.add_argument("--mode", default="both", choices=["lisa", "generate", "both"],
                        help="lisa: answer forced to '[SEG].' (LISA's numbers); generate: the model answers; both")
    parser.add_argument("--all-queries", action="store_true",
                        help="score every phrasing of each ReasonSeg image, not only the first (both reported)")
    parser.add_argument("--batch-size", type=int, default=1, help="items per forward pass (numbers do not change)")
    parser.add_argument("--out", default="eval_output",
                        help="folder for per_sample.jsonl, metrics.json, report.html; a rerun resumes there")
    parser.add_argument("--report", action="store_true", help="also write report.html with the 24 worst samples")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..evaluation.datasets import load_dataset, parse_data_spec
    from ..evaluation.runner import evaluate, parse_modes
    from ..inference.sharding import current_shard

    if args.force_seg:
        raise InputError("--force-seg does not apply to eval: --mode lisa forces the [SEG]; leave --force-seg out")
    parse_modes(args.mode)
    # read the data first: a wrong path fails before the model loads
    kind, path = parse_data_spec(args.data)
    dataset = load_dataset(kind, path, split=args.split, all_queries=args.all_queries)
    shard = current_shard()
    if shard.world > 1 and args.device is None:
        from accelerate import PartialState

        args.device = str(PartialState().device)
    segmenter = load_segmenter(args)
    result = evaluate(
        segmenter,
        dataset,
        mode=args.mode,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        out_dir=Path(args.out),
        report=args.report,
        progress=not args.no_progress,
        limit=args.limit,
        model_name=args.model,
        shard=shard,
    )
    if not shard.is_main:
        return 0
    for problem in dataset.problems:
        print(problem, file=sys.stderr)
    print(result.table)
    if args.model is None and "lisa" in parse_modes(args.mode):
        print("note: the bundled demo model names what it segments before its [SEG] (\"It is the small red star at "
              "(3, 6) [SEG].\"); LISA's forced answer \"[SEG].\" skips that, so its lisa column means little: judge "
              "it with --mode generate", file=sys.stderr)
    for path in result.files:
        print(f"wrote {path}")
    return 1 if result.metrics.get("not_scored") else 0
