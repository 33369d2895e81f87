"""`reasonseg build --vlm SRC --sam SAM --out DIR`: a reasonseg checkpoint from a vision-language model and SAM."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build",
        help="assemble a reasonseg model from a LLaVA-style VLM and SAM weights (LISA's starting point)",
        description="Assemble a reasonseg checkpoint that `reasonseg train` starts from. See docs/build_from_parts.md.",
    )
    parser.add_argument(
        "--vlm", required=True, metavar="SRC",
        help="original LLaVA checkpoint, transformers LlavaForConditionalGeneration, or a causal LM with --vision-tower "
        "(directory or hub id); with --delta: the base LLaMA",
    )
    parser.add_argument(
        "--sam", required=True, metavar="SAM",
        help="segment-anything .pth (sam_vit_h_4b8939.pth, vit_l, vit_b) or transformers SAM (facebook/sam-vit-huge)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="new directory for the reasonseg checkpoint")
    parser.add_argument("--delta", default=None, metavar="DELTA", help="LLaVA delta release applied to the base --vlm")
    parser.add_argument("--vision-tower", default=None, metavar="V", help="CLIP/SigLIP tower (path or hub id)")
    parser.add_argument("--conv-type", default=None, choices=["llava_v1", "llava_llama_2"],
                        help="conversation template (default: llava_llama_2 for Llama-2 names, else llava_v1)")
    parser.add_argument("--precision", default="auto", help="auto (the VLM's storage dtype), fp32, bf16 or fp16")
    frame = parser.add_mutually_exclusive_group()
    frame.add_argument("--im-start-end", dest="im_start_end", action="store_true", default=None,
                       help="frame the image with <im_start>/<im_end> (LISA's training default)")
    frame.add_argument("--no-im-start-end", dest="im_start_end", action="store_false",
                       help="do not, even when the VLM does")
    parser.add_argument("--projector-type", default="mlp2x_gelu", choices=["linear", "mlp2x_gelu"],
                        help="the new projector of a plain causal LM")
    parser.add_argument("--seed", type=int, default=0, help="initialisation of the new parts")
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..checkpoints.build import build_checkpoint

    out, report = build_checkpoint(
        args.vlm,
        args.sam,
        args.out,
        delta=args.delta,
        vision_tower=args.vision_tower,
        conv_type=args.conv_type,
        precision=args.precision,
        use_im_start_end=args.im_start_end,
        projector_type=args.projector_type,
        seed=args.seed,
    )
    tokens = ", ".join(f"{token}={index}" for token, index in report.added_tokens.items())
    print(f"VLM layout: {report.vlm_layout}; SAM: {report.sam_format}; dtype {report.dtype}; template {report.conv_type}, image {report.image_placement.replace('_', ' ')}, {report.image_attention} image attention")
    print(f"tokens: {tokens}; vocabulary {report.vocab_size}; new: {', '.join(report.new_parts)}")
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}; fine-tune with: reasonseg train --config configs/lisa-7b.yaml model={out}")
    return 0
