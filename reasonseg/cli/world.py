"""`reasonseg world`: the procedural shapes world (docs/toy_world.md).

    reasonseg world generate --out DIR [--split train|val|test] [--num N] [--start K] [--families attribute,...]
"""

from __future__ import annotations

import time

from ..errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser("world", help="generate the procedural shapes world (training/test data)")
    commands = parser.add_subparsers(dest="world_command", metavar="COMMAND")
    gen = commands.add_parser("generate", help="write a split in the ReasonSeg on-disk format")
    gen.add_argument("--out", required=True, help="output directory (the split goes in OUT/SPLIT/)")
    gen.add_argument("--split", default="train", help="train, val or test (default: train)")
    gen.add_argument("--num", type=int, default=100, help="number of scenes (default: 100)")
    gen.add_argument("--start", type=int, default=0, help="index of the first scene in the split (default: 0)")
    gen.add_argument("--families", default=None,
                     help="comma-separated query families to keep (default: all): attribute, spatial, superlative, "
                          "reasoning, multi_target, no_target, explanatory")
    gen.set_defaults(func=run_generate)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser) -> int:
    parser.print_help()
    return 2


def parse_families(value: str | None) -> list[str] | None:
    from ..data.toy_world import FAMILIES

    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise InputError(f"unknown query family {', '.join(unknown) or repr(value)}; choose from {', '.join(FAMILIES)}")
    return names


def run_generate(args) -> int:
    from ..data.toy_world import FAMILIES, SPLIT_OFFSETS, write_reasonseg_split

    if args.split not in SPLIT_OFFSETS:
        raise InputError(f"unknown split {args.split!r}; use one of {', '.join(SPLIT_OFFSETS)}")
    if args.num < 0 or args.start < 0:
        raise InputError(f"--num and --start must be >= 0 (got --num {args.num}, --start {args.start})")
    families = parse_families(args.families)
    began = time.perf_counter()
    summary = write_reasonseg_split(args.out, args.split, args.num, start=args.start, families=families)
    elapsed = time.perf_counter() - began
    print(f"wrote {summary.records} image/json pairs from {summary.scenes} scenes to {summary.directory} "
          f"({elapsed:.1f} s)")
    if summary.skipped_scenes:
        print(f"skipped {summary.skipped_scenes} scenes with no query of the requested families")
    for family in FAMILIES:
        if families is None or family in families:
            print(f"  {family:<13} {summary.families.get(family, 0)}")
    print(f"  qa.jsonl: {summary.qa_pairs} pairs; instances.jsonl: {summary.instances} objects")
    return 0
