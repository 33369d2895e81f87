"""`reasonseg predict`: answer prompts about images and write masks, overlays and JSON.

Two shapes:

* ``--image a.jpg [--image b.jpg ...] --prompt TEXT``: one prompt, a few images; LISA's per-mask PNG and overlay
  plus ``<name>.json`` per image (unchanged from the first version).
* ``--images DIR_OR_GLOB --prompt TEXT [--prompt TEXT ...]`` or ``--jobs FILE.jsonl``: whole collections, batched
  (``--batch-size``), resumable, sharded over processes when run under ``accelerate launch``; writes
  ``<out>/predictions.jsonl`` (and ``--coco-json``). See :mod:`reasonseg.inference.batch_jobs`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError, ReasonSegError
from .common import add_model_arguments, load_segmenter
from .outputs import write_prediction_files

_FAILURES_LISTED = 20


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images from text prompts, non-interactively (one image, a folder, or a job list)",
        description="Answer prompts about images. With --images/--jobs the same command runs under "
        "`accelerate launch` to split the work over processes, GPUs and nodes; a rerun skips finished ids. "
        "Images that cannot be read are recorded with their error in predictions.jsonl and listed on stderr; the "
        "run goes on and exits 0 (1 with --fail-on-error).",
    )
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", action="append", help="image path (repeatable); one --prompt for all")
    source.add_argument("--images", metavar="DIR_OR_GLOB",
                        help="a folder (its image files, not recursive) or a quoted glob ('data/**/*.png')")
    source.add_argument("--jobs", metavar="FILE.jsonl",
                        help='one {"id", "image", "prompt" | "prompts", "force_seg"?} per line; image paths may '
                        "be relative to the file's folder")
    parser.add_argument("--prompt", action="append",
                        help="the question (repeatable with --images: every image gets every prompt; with --jobs: "
                        "the default for lines without one)")
    parser.add_argument("prompt_text", nargs="?", metavar="PROMPT",
                        help="the question, instead of --prompt: reasonseg predict --image a.png \"the vessel\"")
    parser.add_argument("--out", default="vis_output", help="output directory")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="(image, prompt) pairs per forward pass with --images/--jobs (default 4)")
    parser.add_argument("--save-masks", action="store_true", help="also write masks/<id>_mask_<i>.png (0/255)")
    parser.add_argument("--save-overlays", action="store_true",
                        help="also write overlays/<id>.jpg, every mask blended in its own colour")
    parser.add_argument("--coco-json", metavar="PATH", help="also write COCO-style results (a list of RLE detections)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--fail-on-error", action="store_true",
                        help="with --images/--jobs: exit 1 when any image failed (default: 0 once all are recorded)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.prompt_text is not None:
        args.prompt = (args.prompt or []) + [args.prompt_text]
    if args.image:
        return _run_single(args)
    return _run_collection(args)


def _run_single(args) -> int:
    from ..processing.image_io import load_image

    if not args.prompt or len(args.prompt) != 1:
        raise InputError("--image takes exactly one --prompt; for several prompts per image use --images or --jobs")
    if args.coco_json or args.save_masks or args.save_overlays:
        raise InputError("--coco-json, --save-masks and --save-overlays go with --images or --jobs; "
                         "--image always writes masks, overlays and <name>.json")
    prompt = args.prompt[0]
    errors = []
    for image_path in args.image:  # one readable image is worth loading the model for (seconds to minutes)
        try:
            load_image(image_path)
            break
        except ReasonSegError as err:
            errors.append(err)
    else:
        raise errors[0]  # missing or unreadable: said before the model loads
    segmenter = load_segmenter(args)
    failures = 0
    for image_path in args.image:
        try:
            image = load_image(image_path)
            prediction = segmenter.predict(image, prompt, args.max_new_tokens, force_seg=args.force_seg)
        except ReasonSegError as err:  # one bad image does not lose the others
            print(f"error: {err}", file=sys.stderr)
            failures += 1
            continue
        name = Path(image_path).stem
        written = write_prediction_files(image, prediction, prompt, Path(args.out), name)
        print(f"{image_path}: {prediction.text}")
        for path in written:
            print(f"  wrote {path}")
    return 1 if failures else 0


def _run_collection(args) -> int:
    from ..inference.batch_jobs import jobs_from_images, read_jobs, run_jobs
    from ..inference.sharding import current_shard

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be 1 or more, not {args.batch_size}")
    # read the job list before loading a model: a typo fails in a second, not after minutes of loading
    if args.images is not None:
        jobs = jobs_from_images(args.images, args.prompt or [])
    else:
        jobs = read_jobs(args.jobs, default_prompts=args.prompt or [])
    shard = current_shard()
    if shard.world > 1 and args.device is None and args.device_map is None:
        from accelerate import PartialState

        args.device = str(PartialState().device)  # this process's own GPU (or the CPU)
    segmenter = load_segmenter(args)
    summary = run_jobs(
        segmenter,
        jobs,
        Path(args.out),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        force_seg=args.force_seg,
        save_masks=args.save_masks,
        save_overlays=args.save_overlays,
        coco_json=args.coco_json,
        shard=shard,
        progress=not args.no_progress,
    )
    if not shard.is_main:
        return 0
    bad = {}  # one line per image, however many of its prompts failed
    for _, image, message in summary.failures:
        bad.setdefault((image, message), None)
    for image, message in list(bad)[:_FAILURES_LISTED]:
        print(f"error: {message}" if image in message else f"error: {image}: {message}", file=sys.stderr)
    if len(bad) > _FAILURES_LISTED:
        print(f"error: ... and {len(bad) - _FAILURES_LISTED} more (see \"error\" in predictions.jsonl)",
              file=sys.stderr)
    done = f"{summary.predicted + summary.failed_now} new, {summary.skipped} already done"
    if shard.world > 1:
        done = f"process 0 of {shard.world}: {done}"
    print(f"{summary.predictions_path}: {summary.total_records - len(summary.failures)} predictions, "
          f"{len(summary.failures)} failed ({done})")
    if summary.coco_path is not None:
        print(f"wrote {summary.coco_path}")
    return 1 if summary.failures and args.fail_on_error else 0
