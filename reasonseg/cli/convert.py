"""`reasonseg convert`: foreign checkpoints in, a native self-contained reasonseg checkpoint out."""

from __future__ import annotations

from ..errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert a LISA checkpoint to a native reasonseg checkpoint")
    parser.add_argument("--from-lisa", metavar="SRC", help="original LISA checkpoint directory or hub id")
    parser.add_argument("--out", required=True, metavar="DST", help="new directory for the native checkpoint")
    parser.add_argument("--vision-tower", default=None, help="override the CLIP tower named by SRC's config")
    parser.add_argument("--precision", default=None, help="fp32, bf16 or fp16 (default: SRC's storage dtype)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoints.convert import convert_lisa_checkpoint
    from ..checkpoints.loading import locate_checkpoint, parse_precision

    if not args.from_lisa:
        raise InputError("say what to convert: --from-lisa SRC")
    dtype = parse_precision(args.precision) if args.precision else None
    out = convert_lisa_checkpoint(locate_checkpoint(args.from_lisa), args.out, args.vision_tower, dtype)
    print(f"wrote {out}")
    return 0
