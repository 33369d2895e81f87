"""`reasonseg eval` throughput of a tiny model on CPU: images/s at batch 1 vs batch 8, lisa vs generate mode.

python benchmarks/eval_throughput.py [--images 16] [--max-new-tokens 16] [--threads 2]

The data is a generated ReasonSeg folder of 480x640 images (one query each, so images/s = items/s). The tiny model
is untrained; generate mode decodes exactly ``--max-new-tokens`` tokens per answer (EOS is masked out), so the two
modes are compared at a fixed answer length. The untrained model emits no [SEG] in those answers, so generate mode
skips SAM's mask decoder, which lisa mode always runs (on this tiny config the decoder, over 64x64 image tokens, is
a large share of the time). Numbers are the best of ``--repeats`` runs; on a shared machine they move with its load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reasonseg import Segmenter
from reasonseg.evaluation import evaluate, load_dataset
from reasonseg.modeling.tiny import build_tiny_model


def write_folder(folder: Path, count: int) -> None:
    rng = np.random.RandomState(0)
    for i in range(count):
        Image.fromarray((rng.rand(480, 640, 3) * 255).astype(np.uint8)).save(folder / f"b{i:03d}.jpg", quality=90)
        shapes = [{"label": "target", "points": [[100, 80], [400, 80], [400, 300], [100, 300]]}]
        record = {"text": [f"the object number {i}"], "is_sentence": False, "shapes": shapes}
        (folder / f"b{i:03d}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = build_tiny_model(seed=0)
    # no EOS: every answer is max_new_tokens long, whatever the random weights say
    model.language_model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.text_config.vocab_size))
    model.language_model.lm_head.bias.data[processor.eos_token_id] = -1e4
    segmenter = Segmenter(model, processor)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder, args.images)
        dataset = load_dataset("reasonseg", folder)
        evaluate(segmenter, dataset, mode="both", limit=2, max_new_tokens=2)  # warm-up
        print(f"{args.images} images 480x640, tiny model, CPU, {args.threads} threads, "
              f"generate answers {args.max_new_tokens} tokens")
        results = {}
        for mode in ("lisa", "generate"):
            for batch in (1, 8):
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    result = evaluate(segmenter, dataset, mode=mode, batch_size=batch,
                                      max_new_tokens=args.max_new_tokens)
                    times.append(time.perf_counter() - start)
                results[(mode, batch)] = (args.images / min(times), result.metrics["results"][mode]["protocol"])
                print(f"{mode:>8}  batch {batch}:  {args.images / min(times):6.2f} images/s  "
                      f"({min(times):.2f} s)  gIoU {results[(mode, batch)][1]['overall']['giou']:.4f}")
        for mode in ("lisa", "generate"):
            print(f"{mode:>8}  batch 8 / batch 1: {results[(mode, 8)][0] / results[(mode, 1)][0]:.2f}x; "
                  f"same metrics: {results[(mode, 8)][1] == results[(mode, 1)][1]}")
        print(f"lisa / generate at batch 1: {results[('lisa', 1)][0] / results[('generate', 1)][0]:.2f}x")


if __name__ == "__main__":
    main()
