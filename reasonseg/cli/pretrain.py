"""`reasonseg pretrain`: the stages before reasoning segmentation (how the demo model's parts are made).

    reasonseg pretrain sam --config configs/demo/toy_sam.yaml [key=value ...] [--resume] [--stop-after N]
    reasonseg pretrain vlm --config configs/demo/toy_llava.yaml [key=value ...] [--resume] [--stop-after N]
"""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="pre-train a model part on the shapes world (toy SAM, toy LLaVA)")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    for name, help_text, example in (
        ("sam", "a small SAM trained with point and box prompts on instance masks", "configs/demo/toy_sam.yaml"),
        ("vlm", "a small LLaVA trained on the world's questions, answers and captions", "configs/demo/toy_llava.yaml"),
    ):
        stage = stages.add_parser(name, help=help_text)
        stage.add_argument("--config", required=True, help=f"YAML config (see {example})")
        stage.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=100")
        stage.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
        stage.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                           help="stop (with a checkpoint) once this step is reached; rerun with --resume to go on")
        stage.set_defaults(func=run_stage)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_stage(args) -> int:
    if args.stage == "sam":
        from ..training.sam_pretrain import load_sam_pretrain_config as load, pretrain_sam as train
    else:
        from ..training.vlm_pretrain import load_vlm_pretrain_config as load, pretrain_vlm as train

    final = train(load(args.config, args.overrides), resume=args.resume, stop_after=args.stop_after)
    if final.is_dir():
        print(f"{args.stage} stage written to {final}")
    else:
        print(f"stopped at step {args.stop_after}; continue with --resume")
    return 0
