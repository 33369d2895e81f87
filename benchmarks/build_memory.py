"""Peak memory of `reasonseg build` for a model of about 1B parameters, as a ratio to the size of its weights.

Writes random-weight parts in the layouts users start from, then runs ``reasonseg build`` on them, each in a fresh
process, and reads that process's peak RSS (``VmHWM``):

* ``llava``: an original LLaVA checkpoint (LLaMA 2048 wide x 18 layers + MLP projector, bf16, two
  ``pytorch_model-*.bin`` shards) with a CLIP ViT-B/16 tower beside it, and SAM ViT-B as segment-anything's fp32
  ``.pth``;
* ``delta``: the same LLaVA given as a base LLaMA (safetensors) plus a LLaVA-style delta (``.bin`` shards, the
  vocabulary grown by 3 rows), applied while building;
* ``llava_hf``: the same sizes as a transformers ``LlavaForConditionalGeneration`` (safetensors), SAM as a
  transformers directory.

Goal (issue 10): peak RSS <= 1.3 x the weights (the built checkpoint's ``model.safetensors``).

    python benchmarks/build_memory.py [--layouts llava,delta,llava_hf] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_size import (  # noqa: E402
    current_rss_bytes,
    llama_entries,
    peak_rss_bytes,
    random_tensor,
    sam_shapes,
    write_clip,
    write_sharded,
    write_tokenizer,
)

LLAMA = dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=18, head_dim=128)
CLIP_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, heads=12)
SAM_B = dict(width=768, depth=12, heads=12, global_attn=[2, 5, 8, 11])


def llava_config(vocab: int, tower: str) -> dict:
    return {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": LLAMA["hidden_size"],
        "intermediate_size": LLAMA["intermediate_size"], "num_hidden_layers": LLAMA["num_hidden_layers"],
        "num_attention_heads": LLAMA["hidden_size"] // LLAMA["head_dim"], "vocab_size": vocab, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "mm_vision_tower": tower, "mm_hidden_size": CLIP_B["hidden_size"],
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False, "tie_word_embeddings": False,
    }


def projector_entries() -> list:
    hidden = LLAMA["hidden_size"]
    return [("model.mm_projector.0.weight", (hidden, CLIP_B["hidden_size"])), ("model.mm_projector.0.bias", (hidden,)),
            ("model.mm_projector.2.weight", (hidden, hidden)), ("model.mm_projector.2.bias", (hidden,))]


def write_parts(workdir: Path, layouts: list[str]) -> None:
    from safetensors.torch import save_file

    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "clip" / "config.json").is_file():
        write_clip(workdir / "clip", CLIP_B, torch.bfloat16, seed=1)
    if not (workdir / "sam_vit_b.pth").is_file():
        generator = torch.Generator().manual_seed(2)
        sam = {k: random_tensor(k, shape, torch.float32, generator) for k, (shape, _) in sam_shapes(**SAM_B).items()}
        torch.save(sam, workdir / "sam_vit_b.pth")
    llava = workdir / "llava"
    if not (llava / "config.json").is_file():
        llava.mkdir(exist_ok=True)
        vocab = write_tokenizer(llava, added=[])
        write_sharded(llama_entries(LLAMA, vocab) + projector_entries(), llava, 1.1e9, torch.bfloat16, seed=3)
        (llava / "config.json").write_text(json.dumps(llava_config(vocab, str(workdir / "clip"))))
    if "delta" in layouts and not (workdir / "delta" / "config.json").is_file():
        base, delta = workdir / "base_llama", workdir / "delta"
        base.mkdir(exist_ok=True)
        delta.mkdir(exist_ok=True)
        vocab = write_tokenizer(delta, added=[])
        grown = vocab + 3  # LLaVA's deltas grow the vocabulary
        write_sharded(llama_entries(LLAMA, grown) + projector_entries(), delta, 1.1e9, torch.bfloat16, seed=4)
        (delta / "config.json").write_text(json.dumps(llava_config(grown, str(workdir / "clip"))))
        generator = torch.Generator().manual_seed(5)
        tensors = {k: random_tensor(k, shape, torch.bfloat16, generator) for k, shape in llama_entries(LLAMA, vocab)
                   if not k.endswith("inv_freq")}
        save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
        config = {k: v for k, v in llava_config(vocab, "").items() if not k.startswith("mm_")}
        config.update(architectures=["LlamaForCausalLM"], model_type="llama")
        (base / "config.json").write_text(json.dumps(config))
        del tensors
    if "llava_hf" in layouts and not (workdir / "llava_hf" / "config.json").is_file():
        write_llava_hf(workdir)
    if "llava_hf" in layouts and not (workdir / "sam_hf" / "config.json").is_file():
        from transformers import SamConfig, SamModel

        config = SamConfig(vision_config=dict(hidden_size=SAM_B["width"], num_hidden_layers=SAM_B["depth"],
                                              num_attention_heads=SAM_B["heads"], global_attn_indexes=SAM_B["global_attn"],
                                              mlp_dim=4 * SAM_B["width"]))
        SamModel(config).save_pretrained(str(workdir / "sam_hf"))


def write_llava_hf(workdir: Path) -> None:
    """The LLaVA part as LlavaForConditionalGeneration (built on meta, random tensors, saved as safetensors)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    target = workdir / "llava_hf"
    target.mkdir(exist_ok=True)
    vocab = write_tokenizer(target, added=["<image>"])
    text = LlamaConfig(vocab_size=vocab + 1, hidden_size=LLAMA["hidden_size"], intermediate_size=LLAMA["intermediate_size"],
                       num_hidden_layers=LLAMA["num_hidden_layers"], num_attention_heads=LLAMA["hidden_size"] // 128,
                       tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=CLIP_B["hidden_size"], intermediate_size=CLIP_B["intermediate_size"],
                              num_hidden_layers=CLIP_B["num_hidden_layers"], num_attention_heads=CLIP_B["heads"],
                              image_size=224, patch_size=16)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab)
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "bfloat16"
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(6)
    # the hub layout of llava-hf checkpoints (language_model.model.*, vision_tower.vision_model.*, ...)
    tensors = {}
    for key, value in model.state_dict().items():
        key = key.replace("model.language_model.", "language_model.model.").replace("model.vision_tower.", "vision_tower.vision_model.")
        key = key.replace("model.multi_modal_projector.", "multi_modal_projector.").replace("lm_head.", "language_model.lm_head.")
        if not key.endswith("position_ids"):
            tensors[key] = random_tensor(key, tuple(value.shape), torch.bfloat16, generator)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(target))
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(str(target))


def measure(workdir: Path, layout: str) -> dict:
    from reasonseg.checkpoints.build import build_checkpoint

    out = workdir / f"built_{layout}"
    if out.exists():
        shutil.rmtree(out)
    baseline = current_rss_bytes()
    arguments = {
        "llava": (workdir / "llava", workdir / "sam_vit_b.pth", {}),
        "delta": (workdir / "base_llama", workdir / "sam_vit_b.pth", {"delta": workdir / "delta"}),
        "llava_hf": (workdir / "llava_hf", workdir / "sam_hf", {}),
    }[layout]
    started = time.perf_counter()
    build_checkpoint(arguments[0], arguments[1], out, **arguments[2])
    seconds = time.perf_counter() - started
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    peak = peak_rss_bytes()
    result = {"layout": layout, "seconds": seconds, "weights_gb": weights / 1e9, "peak_rss_gb": peak / 1e9,
              "baseline_rss_gb": baseline / 1e9, "ratio": peak / weights, "ratio_above_baseline": (peak - baseline) / weights}
    shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/reasonseg_build_memory")
    parser.add_argument("--layouts", default="llava,delta,llava_hf")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.measure:
        print("RESULT " + json.dumps(measure(workdir, args.measure)), flush=True)
        return
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    started = time.perf_counter()
    write_parts(workdir, layouts)
    print(f"parts ready in {workdir} ({time.perf_counter() - started:.0f} s)", flush=True)
    results = []
    for layout in layouts:
        completed = subprocess.run([sys.executable, __file__, "--workdir", str(workdir), "--measure", layout],
                                   capture_output=True, text=True, env=dict(os.environ))
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode or not lines:
            print(f"{layout}: failed (exit {completed.returncode})\n{completed.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        results.append(result)
        print(f"{layout}: built in {result['seconds']:.1f} s; weights {result['weights_gb']:.2f} GB; peak RSS "
              f"{result['peak_rss_gb']:.2f} GB = {result['ratio']:.2f} x weights ({result['ratio_above_baseline']:.2f} x "
              f"above the {result['baseline_rss_gb']:.2f} GB of imports)", flush=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
