"""Images per second of ``Segmenter.predict_batch`` at batch 1 vs batch 4 (issue 13); the ratio is the figure.

Two models, random weights, built in memory (nothing downloaded):

* ``tiny``: the seeded test model (``reasonseg.modeling.tiny``), fp32;
* ``lisa7b``: LISA-7B's shapes in bf16 under the loader's precision policy: LLaMA-7B width (4096, MLP 11008,
  32 heads, vocabulary 32003) with a linear projector, CLIP ViT-L/14 (1024 wide, 16 heads, 224 px), SAM ViT-H
  (1280 wide, 16 heads, MLP 5120, 1024 px, window 14), the [SEG] projection 4096 -> 4096 -> 256. ``--layers``,
  ``--clip-layers`` and ``--sam-blocks`` cut the depths (LISA-7B: 32, 24, 32); on a small CPU use a few.

Every image gets the same prompt and ``force_seg=True`` (so each answer has one mask and SAM's decoder runs);
``--new-tokens`` caps the answer. The EOS row of the head is zeroed so random weights do not stop early and both
batch sizes decode the same number of steps. One warm-up call per batch size is not timed; each batch size is then
timed ``--repeats`` times, alternating, and the best round is kept.

    python benchmarks/predict_throughput.py --model tiny
    python benchmarks/predict_throughput.py --model lisa7b --layers 2 --clip-layers 2 --sam-blocks 2 --images 4
    python benchmarks/predict_throughput.py --model lisa7b --device cuda        # full depth on a GPU

Measured (2026-11, the shared 2-core CPU machine, load average 3-6 from other jobs, so absolute times are
noisy and above an idle machine's; both batch sizes ran alternately in one process, best round kept; no GPU was
lent to this session, so there is no GPU row yet):

    model (8 new tokens + the forced [SEG])                        batch 1          batch 4          ratio
    tiny, fp32, 8 images, --threads 1 --repeats 5                  3.73 images/s    3.45 images/s    0.92x
    lisa7b-shaped bf16, LLaMA 2/32, CLIP 2/24, SAM 2/32 blocks,
      4 images (0.77 B parameters), --repeats 2                     0.095 images/s   0.124 images/s   1.30x

Where the lisa7b-shaped batch-1 second goes (per image): SAM ViT-H encoder (2 blocks) 5.0 s, CLIP 0.5 s, prefill
of the 365-token prompt 2.1 s, 8 decode steps 3.0 s. On a CPU the encoders and the prefill are compute-bound and
cost the same per image at any batch size; only the decode steps, bound by reading the weights, are shared by the
batch, which is the whole 1.3x. The tiny model has no weight-bound part (0.92x: batching only adds padding). On a
GPU, where every part but SAM's encoder is bound by memory or launch overhead, the ratio is expected to be larger;
run ``--model lisa7b --device cuda`` (full depth fits in bf16 on one 80 GB GPU) to measure it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from reasonseg import Segmenter

PROMPT = "What is the object in the middle of this picture? Please output segmentation mask."


def tiny_segmenter(device: str) -> Segmenter:
    from reasonseg.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    return Segmenter(model.to(device), processor)


def lisa7b_segmenter(device: str, layers: int, clip_layers: int, sam_blocks: int, dtype: torch.dtype) -> Segmenter:
    """LISA-7B's shapes at the given depths, random weights, ``dtype`` under the loader's precision policy."""
    from transformers import CLIPImageProcessor

    from reasonseg.checkpoints.loading import apply_precision_policy
    from reasonseg.modeling.configuration_reasonseg import ReasonSegConfig
    from reasonseg.modeling.modeling_reasonseg import ReasonSegForCausalLM
    from reasonseg.modeling.tiny import build_tiny_tokenizer
    from reasonseg.processing.processing_reasonseg import ProcessorSettings, ReasonSegProcessor

    tokenizer = build_tiny_tokenizer()  # a small vocabulary for the prompt; the model's head is LLaMA's 32003
    seg_id = tokenizer.convert_tokens_to_ids("[SEG]")
    # SAM ViT-H puts global attention at blocks 7, 15, 23, 31: keep that spacing at any depth (the last is global)
    global_blocks = [b for b in range(sam_blocks) if b % 8 == 7] or [sam_blocks - 1]
    config = ReasonSegConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=clip_layers, num_attention_heads=16, image_size=224, patch_size=14,
                           projection_dim=768),
        text_config=dict(model_type="llama", vocab_size=32003, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False),
        sam_config=dict(
            vision_config=dict(hidden_size=1280, num_hidden_layers=sam_blocks, num_attention_heads=16,
                               global_attn_indexes=global_blocks, output_channels=256, mlp_dim=5120,
                               window_size=14, image_size=1024, patch_size=16, initializer_range=0.02),
        ),
        projector_type="linear",
        seg_token_id=seg_id,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: half the memory and time of fp32-then-cast
    try:
        torch.manual_seed(0)
        model = ReasonSegForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    apply_precision_policy(model, dtype, device)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    settings = ProcessorSettings(conv_type="llava_v1", tokenizer_style="default", add_bos=True)
    return Segmenter(model.to(device), ReasonSegProcessor(tokenizer, image_processor, settings))


def images(count: int) -> list[Image.Image]:
    rng = np.random.RandomState(0)
    sizes = [(480, 640), (640, 480), (512, 512), (375, 500)]
    return [Image.fromarray((rng.rand(*sizes[i % 4], 3) * 255).astype(np.uint8)) for i in range(count)]


def measure(segmenter: Segmenter, pictures, batch_sizes, new_tokens: int, repeats: int, device: str) -> dict:
    head = segmenter.model.get_output_embeddings().weight
    with torch.no_grad():
        head[segmenter.processor.eos_token_id].zero_()  # random weights must not stop early (same steps per size)
    best = {size: float("inf") for size in batch_sizes}
    tokens = {}

    def timed(size: int, count: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = segmenter.predict_batch(pictures[:count], PROMPT, batch_size=size, max_new_tokens=new_tokens,
                                      force_seg=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        tokens[size] = [len(p.token_ids) for p in out]
        return time.perf_counter() - start

    for size in batch_sizes:  # warm-up: one call each (kernels, allocator)
        timed(size, min(size, len(pictures)))
    for _ in range(repeats):
        for size in batch_sizes:
            best[size] = min(best[size], timed(size, len(pictures)))
    return {size: {"seconds": best[size], "images_per_s": len(pictures) / best[size], "tokens": tokens[size]}
            for size in batch_sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "lisa7b"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16", help="lisa7b only")
    parser.add_argument("--layers", type=int, default=32, help="LLaMA layers (LISA-7B: 32)")
    parser.add_argument("--clip-layers", type=int, default=24, help="CLIP layers (ViT-L/14: 24)")
    parser.add_argument("--sam-blocks", type=int, default=32, help="SAM encoder blocks (ViT-H: 32)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    if args.model == "tiny":
        segmenter = tiny_segmenter(args.device)
        label = "tiny, fp32"
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
        segmenter = lisa7b_segmenter(args.device, args.layers, args.clip_layers, args.sam_blocks, dtype)
        label = (f"lisa7b-shaped, {args.precision}, LLaMA {args.layers}/32 layers, CLIP {args.clip_layers}/24, "
                 f"SAM {args.sam_blocks}/32 blocks")
    parameters = sum(p.numel() for p in segmenter.model.parameters())
    print(f"{label}: {parameters / 1e9:.2f} B parameters, built in {time.perf_counter() - start:.1f} s, "
          f"device {args.device}, {torch.get_num_threads()} CPU threads")
    results = measure(segmenter, images(args.images), args.batch_sizes, args.new_tokens, args.repeats, args.device)
    base = results[args.batch_sizes[0]]["images_per_s"]
    for size, result in results.items():
        print(f"batch {size}: {args.images} images in {result['seconds']:.2f} s = {result['images_per_s']:.3f} "
              f"images/s ({result['images_per_s'] / base:.2f}x batch {args.batch_sizes[0]}); "
              f"answer lengths {sorted(set(result['tokens']))}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"model": label, "device": args.device, "images": args.images, "new_tokens": args.new_tokens,
                       "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
