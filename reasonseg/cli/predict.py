"""`reasonseg predict`: answer one prompt about one or more images and write masks, overlays and JSON."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ReasonSegError
from .common import add_model_arguments, load_segmenter
from .outputs import write_prediction_files


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="segment images from a text prompt, non-interactively")
    add_model_arguments(parser)
    parser.add_argument("--image", action="append", required=True, help="image path (repeatable)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", default="vis_output", help="output directory")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..processing.image_io import load_image

    segmenter = load_segmenter(args)
    failures = 0
    for image_path in args.image:
        try:
            image = load_image(image_path)
            prediction = segmenter.predict(image, args.prompt, args.max_new_tokens, force_seg=args.force_seg)
        except ReasonSegError as err:  # one bad image does not lose the others
            print(f"error: {err}", file=sys.stderr)
            failures += 1
            continue
        name = Path(image_path).stem
        written = write_prediction_files(image, prediction, args.prompt, Path(args.out), name)
        print(f"{image_path}: {prediction.text}")
        for path in written:
            print(f"  wrote {path}")
    return 1 if failures else 0
