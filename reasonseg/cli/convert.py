"""`reasonseg convert`: foreign checkpoints in, a native self-contained reasonseg checkpoint out.

    reasonseg convert --from-lisa SRC --out DIR                      # a released LISA checkpoint
    reasonseg convert --from-lisa-weights pytorch_model.bin --vlm SRC --out DIR [--lora-r 8 --lora-alpha 16
        --lora-targets q_proj,v_proj]                                # a LISA training output (LoRA unmerged)
    reasonseg convert --from-sa2va SRC --out DIR                     # a Sa2VA (InternVL + SAM2) checkpoint
"""

from __future__ import annotations

from ..errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert a LISA checkpoint or training output to a reasonseg checkpoint")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-lisa", metavar="SRC", help="original LISA checkpoint directory or hub id")
    source.add_argument(
        "--from-lisa-weights", metavar="FILE",
        help="LISA training state dict (zero_to_fp32.py's pytorch_model.bin, LoRA unmerged); needs --vlm",
    )
    source.add_argument("--from-sa2va", metavar="SRC", help="Sa2VA checkpoint directory or hub id (Sa2VAChatModel)")
    parser.add_argument("--out", required=True, metavar="DST", help="new directory for the native checkpoint")
    parser.add_argument("--vlm", default=None, metavar="SRC",
                        help="with --from-lisa-weights: the --version the training started from (tokenizer, config)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank the run used (checked against the tensors)")
    parser.add_argument("--lora-alpha", type=float, default=16, help="LoRA alpha the run used (not stored in the file)")
    parser.add_argument("--lora-targets", default="q_proj,v_proj", help="LoRA target modules the run used")
    parser.add_argument("--no-im-start-end", action="store_true",
                        help="the run turned LISA's --use_mm_start_end off")
    parser.add_argument("--conv-type", default=None, choices=["llava_v1", "llava_llama_2"],
                        help="with --from-lisa-weights: the run's --conv_type (default: from the --vlm name)")
    parser.add_argument("--vision-tower", default=None, help="override the CLIP tower named by SRC's config")
    parser.add_argument("--precision", default=None,
                        help="fp32, bf16 or fp16 (default: SRC's storage dtype; bf16 for --from-lisa-weights)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoints.loading import locate_checkpoint, parse_precision

    if args.from_lisa_weights:
        from ..checkpoints.lisa_training import convert_lisa_training_weights

        if not args.vlm:
            raise InputError("--from-lisa-weights needs --vlm SRC: the LLaVA (or LISA) model the training started from")
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        out = convert_lisa_training_weights(
            args.from_lisa_weights,
            args.vlm,
            args.out,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_targets=targets,
            vision_tower=args.vision_tower,
            conv_type=args.conv_type,
            precision=args.precision or "bf16",
            use_im_start_end=not args.no_im_start_end,
        )
        print(f"wrote {out}")
        return 0
    if args.from_sa2va:
        from ..checkpoints.sa2va import convert_sa2va_checkpoint

        dtype = parse_precision(args.precision) if args.precision else None
        out = convert_sa2va_checkpoint(locate_checkpoint(args.from_sa2va), args.out, dtype)
        print(f"wrote {out}")
        return 0
    if not args.from_lisa:
        raise InputError(
            "say what to convert: --from-lisa SRC, --from-lisa-weights FILE --vlm SRC or --from-sa2va SRC"
        )
    from ..checkpoints.convert import convert_lisa_checkpoint

    dtype = parse_precision(args.precision) if args.precision else None
    out = convert_lisa_checkpoint(locate_checkpoint(args.from_lisa), args.out, args.vision_tower, dtype)
    print(f"wrote {out}")
    return 0
