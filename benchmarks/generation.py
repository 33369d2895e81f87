"""Answer latency of a tiny model on CPU: KV cache vs full recomputation, first vs second turn on one image.

Prints ratios measured in one run (python benchmarks/generation.py).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from reasonseg import Segmenter
from reasonseg.inference.generation import greedy_decode
from reasonseg.modeling.tiny import build_tiny_model

PROMPT = "What is the red circle in this image? Please output segmentation mask."


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(2)
    model, processor = build_tiny_model(seed=0)
    image = Image.fromarray((np.random.RandomState(0).rand(480, 640, 3) * 255).astype(np.uint8))
    inputs = processor.preprocess_image(image)
    ids = torch.tensor([processor.encode(processor.conversation_prompt([(PROMPT, None)]))])
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
    spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left")
    parts = (model.decoder, model.get_output_embeddings(), model.get_input_embeddings())
    for tokens in (32, 256):
        def run(use_cache):
            return greedy_decode(*parts, spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids,
                                 max_new_tokens=tokens, eos_token_id=None, use_cache=use_cache)
        cached, full = best_of(lambda: run(True)), best_of(lambda: run(False))
        print(f"{tokens:>4} new tokens: KV cache {cached:.3f}s, full recomputation {full:.3f}s, speed-up {full / cached:.1f}x")

    segmenter = Segmenter(model, processor)
    first, second = [], []
    for _ in range(3):
        session = segmenter.chat(image)
        start = time.perf_counter()
        session.ask(PROMPT, max_new_tokens=32)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        session.ask("and the other one?", max_new_tokens=32)
        second.append(time.perf_counter() - start)
    print(f"first turn {min(first):.3f}s (encodes the image), second turn {min(second):.3f}s, "
          f"ratio {min(first) / min(second):.2f}x")


if __name__ == "__main__":
    main()
