"""Flags shared by the verbs that load a model."""

from __future__ import annotations

import argparse

from ..processing.mask_regions import MASK_REGION_RULES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint directory or hub id (default: the bundled demo)")
    parser.add_argument("--vision-tower", default=None, help="override a LISA checkpoint's CLIP tower (path or id)")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16")
    parser.add_argument("--load-in-8bit", action="store_true")
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--device-map", default=None, help="'auto': spread the language model over --max-memory")
    parser.add_argument(
        "--max-memory", action="append", default=None, metavar="DEVICE=SIZE", help="e.g. 0=20GiB, cpu=60GiB (repeatable)"
    )
    parser.add_argument("--conv-type", default=None, choices=["llava_v1", "llava_llama_2"])
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--force-seg", action="store_true", help="append [SEG] when the answer has none")
    parser.add_argument("--mask-regions", default=None, choices=MASK_REGION_RULES,
                        help="keep every region of each mask, or only its largest (default: the checkpoint's choice)")


def parse_max_memory(entries: list[str] | None) -> dict | None:
    """``["0=20GiB", "cpu=60GiB"]`` -> ``{0: "20GiB", "cpu": "60GiB"}`` (accelerate's form)."""
    if not entries:
        return None
    from ..errors import InputError

    budget = {}
    for entry in entries:
        device, sep, size = entry.partition("=")
        if not sep or not size:
            raise InputError(f"--max-memory {entry!r} should look like DEVICE=SIZE, e.g. 0=20GiB or cpu=60GiB")
        budget[int(device) if device.isdigit() else device] = size
    return budget


def load_segmenter(args):
    from ..inference.segmenter import Segmenter
    from ..processing.conversation import get_template

    segmenter = Segmenter.from_pretrained(
        args.model,
        precision=args.precision,
        device=args.device,
        vision_tower=args.vision_tower,
        load_in_8bit=args.load_in_8bit,
        load_in_4bit=args.load_in_4bit,
        device_map=args.device_map,
        max_memory=parse_max_memory(args.max_memory),
        mask_regions=args.mask_regions,
    )
    if args.conv_type:
        segmenter.processor.settings.conv_type = args.conv_type
        segmenter.processor.template = get_template(args.conv_type)
    return segmenter
