"""`reasonseg average MODEL MODEL [...] --out DIR [--weights W W ...]`: the weighted mean of checkpoints
fine-tuned from one model (e.g. the last phases of one training, or runs with different seeds)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("average", help="average the weights of checkpoints fine-tuned from one model")
    parser.add_argument("models", nargs="+", metavar="MODEL", help="native reasonseg checkpoint directories or hub ids")
    parser.add_argument("--out", required=True, metavar="DST", help="new directory for the averaged checkpoint")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one positive weight per MODEL, normalised to sum to 1 (default: equal)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoints.averaging import average_checkpoints

    print(f"wrote {average_checkpoints(args.models, args.out, args.weights)}")
    return 0
