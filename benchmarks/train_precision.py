"""Training-step time of the bundled demo model in fp32 and under bf16 autocast, on this CPU.

    python benchmarks/train_precision.py [--steps 2] [--rounds 2] [--batch-size 2] [--threads 2]

The reason for ``precision: auto`` (reasonseg/training/precision.py): bf16 autocast is faster than fp32 where the
CPU multiplies bf16 natively (AVX-512, through oneDNN) and many times slower where it does not (AVX2 only). The two
modes alternate round by round on one model (a busy machine slows both alike); each step is one forward + backward +
optimiser step of the demo config's LoRA set-up on synthetic images with three questions each.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from pathlib import Path

import numpy as np
import torch

from train_step import _samples

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "reasoning.yaml"


def _setup(args):
    from reasonseg.assets import default_model_path
    from reasonseg.checkpoints.loading import load_model_and_processor
    from reasonseg.training.collate import ReasonSegCollator
    from reasonseg.training.config import load_training_config
    from reasonseg.training.model_setup import prepare_for_training, trainable_token_ids
    from reasonseg.training.trainer import build_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = load_model_and_processor(default_model_path(), precision="fp32", device="cpu")
    config = load_training_config(DEMO_CONFIG, ["precision=fp32"])
    model = prepare_for_training(model, config, trainable_token_ids(processor))
    model.train()
    optimizer, _ = build_optimizer(model, config)
    collator = ReasonSegCollator(processor)
    batches = [collator(_samples(args.batch_size, args.conversations, seed=i)) for i in range(args.steps + 1)]

    def step(batch, bf16: bool):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batches, step


def main() -> None:
    from reasonseg.training.precision import native_bf16, resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16()}, "
          f"precision=auto runs {resolve_precision('auto')}; demo model, {args.threads} threads, batch "
          f"{args.batch_size} images x {args.conversations} questions, {args.rounds} rounds x {args.steps} steps")
    batches, step = _setup(args)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            step(batches[0], bf16)  # warm-up
            started = time.perf_counter()
            for batch in batches[1:]:
                step(batch, bf16)
            seconds[bf16].append((time.perf_counter() - started) / args.steps)
    fp32, bf16 = float(np.median(seconds[False])), float(np.median(seconds[True]))
    print(f"fp32 {fp32:.2f} s/step, bf16 autocast {bf16:.2f} s/step: bf16 takes {bf16 / fp32:.2f}x the time of fp32")


if __name__ == "__main__":
    main()
