"""A LISA-7B-sized checkpoint on CPU: load time, prefill, per-token decode, SAM encoder time and peak memory.

Writes a random-weight checkpoint with LISA-7B's exact shapes in the layout the released LISA checkpoints have
(transformers 4.31 saves: sharded ``pytorch_model-0000k-of-0000n.bin`` pickles with an index, bf16, the CLIP tower
left out and named in ``config.json``): a LLaMA-7B body (4096 wide, 32 layers, 11008 MLP) with a linear projector,
SAM ViT-H (1280 wide, 32 blocks, global attention at 7/15/23/31) under ``model.visual_model.``, the ``[SEG]``
projection, and a CLIP ViT-L/14 tower beside it; the vocabulary is a small sentencepiece model (1000 pieces + 3
added tokens). Then, each in a fresh process, it loads the checkpoint with ``--precision bf16`` on the CPU (and with
``--load-in-8bit``) and runs one ``predict``, printing:

    load time, CLIP and SAM image-encoder time, prefill time, decode time per token, peak RSS / weights size,
    and, in the same process with the same weights, a bare transformers ``LlamaForCausalLM`` prefill and decode step.

Goals (issue 10): peak RSS <= 1.3 x the weights; decode per token within 1.2 x the bare LlamaForCausalLM step.

    python benchmarks/real_size.py                  # full size: ~15 GB of weights, ~31 GB of disk with 8-bit
    python benchmarks/real_size.py --scale 0.25     # the same layout, every width and depth scaled (CPU-friendly)
    python benchmarks/real_size.py --skip-8bit --new-tokens 16 --workdir /data/rs_bench

``--scale s`` multiplies LLaMA's width and depth, and SAM's and CLIP's depth, by ``s`` (heads stay 128 / 80 / 64
wide), so a smaller run keeps every code path. Results go to ``<workdir>/results.json``.

Measured (2026-11, the 2-core / 24 GiB CPU machine, shared: load average about 8 during the run, so absolute times
are several times what an idle machine gives; the same-process comparisons alternate and keep each side's best
round, so they hold). ``--scale 0.5 --new-tokens 12``: LLaMA 2048 x 16 layers, SAM ViT-H width with 16 blocks, CLIP
ViT-L width with 12 layers; 2.62 GB of weights (2.32 GB LISA shards + 0.30 GB CLIP); prompt 330 tokens.

    mode  load    CLIP   SAM enc.  prefill  decode/token          vs bare LlamaForCausalLM   peak RSS
    bf16  1.3 s   4.7 s  104 s     14.7 s   1.65 s (bare 1.72 s)  x0.96                      4.41 GB = 1.68 x (after load 0.47)
    8bit  34.3 s  3.0 s   79 s     38.3 s   3.10 s (bare 1.98 s)  x1.57                      5.35 GB = 2.04 x (after load 3.08)

Where the memory goes (bf16): 0.40 GB of imports, the weights (memory-mapped, resident once read), and 1.4 GB more,
most of it (1.2 GB, measured on one block alone) the activations of SAM ViT-H's global attention on one 1024 x 1024
image (4096 tokens x 16 heads, softmax in fp32); neither shrinks with ``--scale``. At full size that fixed part is about a tenth of the 14.9 GB of weights, and the full-size
run (2026-11-23, machine otherwise idle, ``--skip-8bit --new-tokens 8``) measured:

    bf16  load 0.7 s | CLIP 8.0 s | SAM enc. 23.2 s | prefill 13.4 s | decode 0.745 s/token
          same process: prefill 11.35 s vs bare 11.62 s; decode 0.930 vs bare 0.781 s/token (x1.19)
          peak RSS 16.82 GB = 1.13 x the 14.90 GB of weights The 8-bit load converts the LISA layout to a native
checkpoint once (in the same process, counted in its load time and peak) and quantises the language model with
bitsandbytes; on a CPU, int8 is not faster than bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

TOKENS = ["[SEG]", "<im_start>", "<im_end>"]
PROMPT = "What is the object in the middle of this picture? Please output segmentation mask."


# ---------------------------------------------------------------------------------------------------------------
# shapes


def shapes(scale: float) -> dict:
    """LISA-7B's part shapes, scaled."""

    def multiple(value, step):
        return max(step, int(round(value / step)) * step)

    sam_depth = max(4, int(round(32 * scale)))
    sam_depth -= sam_depth % 4  # global attention closes each quarter, as in ViT-H (7, 15, 23, 31)
    return {
        "llama": dict(
            hidden_size=multiple(4096 * scale, 128),
            intermediate_size=multiple(11008 * scale, 256),
            num_hidden_layers=max(2, int(round(32 * scale))),
            head_dim=128,
        ),
        "sam": dict(width=1280, depth=sam_depth, heads=16, global_attn=[sam_depth * (q + 1) // 4 - 1 for q in range(4)]),
        "clip": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=max(2, int(round(24 * scale))), heads=16),
    }


# ---------------------------------------------------------------------------------------------------------------
# writing the checkpoint


def write_tokenizer(directory: Path, added: list[str] = TOKENS) -> int:
    """A 1000-piece sentencepiece BPE (LLaMA's settings: byte fallback, <unk>/<s>/</s> = 0/1/2) plus ``added``
    (LISA's 3 tokens), saved as transformers 4.31 saved LISA's slow LlamaTokenizer. Returns the base vocabulary size."""
    import sentencepiece as spm

    words = ("what is the object in middle of this picture please output segmentation mask sure it a an red blue "
             "green car person dog street left right top bottom small large which shape could roll answer because "
             "there no such image chat between curious human artificial intelligence assistant gives helpful detailed "
             "polite answers questions").split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(2000)]
    prefix = directory / "spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=1000, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    os.replace(f"{prefix}.model", directory / "tokenizer.model")
    Path(f"{prefix}.vocab").unlink()
    vocab = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()
    token = lambda content: {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}  # noqa: E731
    if added:
        (directory / "added_tokens.json").write_text(json.dumps({t: vocab + i for i, t in enumerate(added)}, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": token("<s>"), "eos_token": token("</s>"), "pad_token": "<unk>", "unk_token": token("<unk>")}, indent=2))
    config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": True,
              "model_max_length": 512, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer"}
    for name in ("bos_token", "eos_token", "unk_token"):
        config[name] = {"__type": "AddedToken", **token({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}[name])}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return vocab


def _meta_state_shapes(module_class, config) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        module = module_class(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def sam_shapes(width: int, depth: int, heads: int, global_attn: list[int]) -> dict:
    """segment-anything names and shapes of a SAM image encoder of that size (+ the fixed prompt encoder/decoder)."""
    from transformers import SamConfig, SamModel

    from reasonseg.checkpoints.sam_keys import segment_anything_key

    config = SamConfig(vision_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                          global_attn_indexes=global_attn, mlp_dim=4 * width))
    out = {}
    for key, value in _meta_state_shapes(SamModel, config).items():
        original = segment_anything_key(key)
        if original is not None:
            out[original] = value
    return out


def random_tensor(key: str, shape, dtype, generator) -> torch.Tensor:
    if key.endswith("inv_freq"):
        return 1.0 / (10000 ** (torch.arange(0, shape[0] * 2, 2, dtype=torch.float32) / (shape[0] * 2)))
    if re.search(r"(norm|layernorm|layrnorm|neck\.[13]|mask_downscaling\.[14]|output_upscaling\.1)[^.]*\.weight$", key):
        return torch.ones(shape, dtype=dtype)
    tensor = torch.empty(shape, dtype=dtype)
    return tensor.normal_(0.0, 0.02, generator=generator)


def write_sharded(entries, directory: Path, max_shard_bytes: float, dtype, seed: int) -> int:
    """``entries``: (key, shape) in order -> ``pytorch_model-0000k-of-0000n.bin`` + index, bf16 but the rotary tables. Shards
    are generated and written one at a time. Returns the total bytes."""
    generator = torch.Generator().manual_seed(seed)
    shards, current, size = [], [], 0
    for key, shape in entries:
        nbytes = torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((key, shape))
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for index, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{index:05d}-of-{len(shards):05d}.bin"
        tensors = {}
        for key, shape in shard:
            tensors[key] = random_tensor(key, shape, torch.float32 if key.endswith("inv_freq") else dtype, generator)
            total += tensors[key].numel() * tensors[key].element_size()
        torch.save(tensors, directory / name)
        weight_map.update({key: name for key in tensors})
        del tensors
        print(f"  wrote {name}", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return total


def write_clip(directory: Path, clip: dict, dtype, seed: int) -> int:
    """CLIP ViT-L/14 (224 px) as a CLIPVisionModel saved by transformers 4.x (``vision_model.`` keys)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=clip["hidden_size"], intermediate_size=clip["intermediate_size"],
                              num_hidden_layers=clip["num_hidden_layers"], num_attention_heads=clip["heads"],
                              image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5)
    generator = torch.Generator().manual_seed(seed)
    tensors = {f"vision_model.{k}": random_tensor(k, shape, dtype, generator)
               for k, (shape, _) in _meta_state_shapes(CLIPVisionModel, config).items() if not k.endswith("position_ids")}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["CLIPVisionModel"]
    config.save_pretrained(str(directory))
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(str(directory))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def llama_entries(llama: dict, vocab: int) -> list:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=llama["hidden_size"], intermediate_size=llama["intermediate_size"],
                         num_hidden_layers=llama["num_hidden_layers"],
                         num_attention_heads=llama["hidden_size"] // llama["head_dim"], tie_word_embeddings=False)
    entries = []
    for key, (shape, _) in _meta_state_shapes(LlamaForCausalLM, config).items():
        entries.append((key, shape))
        if key.endswith("self_attn.o_proj.weight"):  # transformers 4.31 saved the rotary table of every layer
            entries.append((key.replace("o_proj.weight", "rotary_emb.inv_freq"), (llama["head_dim"] // 2,)))
    return entries


def write_lisa_checkpoint(directory: Path, scale: float, seed: int = 0, max_shard_gb: float = 5.0) -> dict:
    dims = shapes(scale)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(directory)
    full_vocab = vocab + len(TOKENS)
    hidden = dims["llama"]["hidden_size"]
    dtype = torch.bfloat16
    entries = llama_entries(dims["llama"], full_vocab)
    entries += [("model.mm_projector.weight", (hidden, dims["clip"]["hidden_size"])), ("model.mm_projector.bias", (hidden,))]
    sam = dims["sam"]
    entries += [(f"model.visual_model.{k}", shape) for k, (shape, _) in sam_shapes(**sam).items()]
    entries += [("model.text_hidden_fcs.0.0.weight", (hidden, hidden)), ("model.text_hidden_fcs.0.0.bias", (hidden,)),
                ("model.text_hidden_fcs.0.2.weight", (256, hidden)), ("model.text_hidden_fcs.0.2.bias", (256,))]
    print(f"writing a LISA-layout checkpoint (scale {scale}) to {directory}", flush=True)
    lisa_bytes = write_sharded(entries, directory, max_shard_gb * 1e9, dtype, seed)
    clip_bytes = write_clip(directory / "clip-vit-large-patch14", dims["clip"], dtype, seed + 1)
    llama = dims["llama"]
    config = {
        "_name_or_path": "LLaVA-Lightning-7B-v1-1", "architectures": ["LISAForCausalLM"], "model_type": "llava",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu", "hidden_size": hidden,
        "intermediate_size": llama["intermediate_size"], "num_hidden_layers": llama["num_hidden_layers"],
        "num_attention_heads": hidden // llama["head_dim"], "num_key_value_heads": hidden // llama["head_dim"],
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "initializer_range": 0.02, "vocab_size": full_vocab,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.31.0", "use_cache": False,
        "mm_hidden_size": dims["clip"]["hidden_size"], "mm_use_im_start_end": True, "mm_use_im_patch_token": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": "clip-vit-large-patch14",
        "vision_tower": "clip-vit-large-patch14", "out_dim": 256, "train_mask_decoder": True, "use_mm_proj": True,
        "image_aspect_ratio": "square", "freeze_mm_mlp_adapter": True, "tune_mm_mlp_adapter": False,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    sizes = {"lisa_bin_bytes": lisa_bytes, "clip_bytes": clip_bytes, "weights_bytes": lisa_bytes + clip_bytes,
             "scale": scale, "dims": dims}
    (directory / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return sizes


# ---------------------------------------------------------------------------------------------------------------
# measuring (in a fresh process)


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Timer:
    """Wall-clock spans of every forward call of a module (pre- and post-hooks)."""

    def __init__(self, module):
        self.starts, self.ends, self.shapes = [], [], []
        module.register_forward_pre_hook(self._pre, with_kwargs=True)
        module.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        self.shapes.append(tuple(embeds.shape) if embeds is not None else None)
        self.starts.append(time.perf_counter())

    def _post(self, module, args, output):
        self.ends.append(time.perf_counter())

    def spans(self) -> list[float]:
        return [end - start for start, end in zip(self.starts, self.ends)]


def current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def decode_comparison(model, prompt_tokens: int, new_tokens: int, rounds: int = 3) -> dict:
    """reasonseg's greedy decoding (decoder + lm_head + argmax + next embedding per step, KV cache) against
    transformers' ``LlamaForCausalLM`` forward (the same module, the same weights) on a prompt of the same length.
    The two alternate, ``rounds`` times, and each keeps its best round, so a busy machine skews both alike."""
    import numpy as np
    from transformers import DynamicCache

    from reasonseg.inference.generation import greedy_decode, kv_cache_kwargs

    language_model = model.language_model
    dtype = model.get_input_embeddings().weight.dtype
    hidden = language_model.config.hidden_size
    embeds = torch.randn(1, prompt_tokens, hidden, generator=torch.Generator().manual_seed(0)).to(dtype) * 0.02
    ours, bare, ours_prefill, bare_prefill = [], [], [], []
    timer = Timer(model.decoder)
    with torch.no_grad():
        for _ in range(rounds):
            timer.starts.clear(), timer.ends.clear()
            greedy_decode(model.decoder, model.get_output_embeddings(), model.get_input_embeddings(), embeds,
                          torch.ones(1, prompt_tokens, dtype=torch.long), torch.arange(prompt_tokens)[None],
                          new_tokens + 1, eos_token_id=None)
            ours_prefill.append(timer.ends[0] - timer.starts[0])
            ours.append(float(np.median(np.diff(timer.starts[1:]))))
            started = time.perf_counter()
            cache = DynamicCache()
            out = language_model(inputs_embeds=embeds, **kv_cache_kwargs(language_model, cache), use_cache=True)
            bare_prefill.append(time.perf_counter() - started)
            token, steps = out.logits[:, -1].argmax(-1, keepdim=True), []
            for _ in range(new_tokens):
                started = time.perf_counter()
                out = language_model(input_ids=token, **kv_cache_kwargs(language_model, cache), use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                steps.append(time.perf_counter() - started)
            bare.append(float(np.median(steps)))
    return {
        "ours_prefill_s": min(ours_prefill), "bare_prefill_s": min(bare_prefill),
        "ours_decode_s_per_token": min(ours), "bare_decode_s_per_token": min(bare),
        "decode_ratio_to_bare": min(ours) / min(bare),
    }


def measure(checkpoint: Path, mode: str, new_tokens: int) -> dict:
    import numpy as np
    from PIL import Image

    from reasonseg import Segmenter

    sizes = json.loads((checkpoint / "sizes.json").read_text())
    result = {"mode": mode, "threads": torch.get_num_threads(), "baseline_rss_gb": current_rss_bytes() / 1e9}
    started = time.perf_counter()
    segmenter = Segmenter.from_pretrained(str(checkpoint), precision="bf16", device="cpu", load_in_8bit=mode == "8bit")
    result["load_s"] = time.perf_counter() - started
    result["peak_rss_after_load_gb"] = peak_rss_bytes() / 1e9
    model = segmenter.model
    decoder, sam_encoder, tower = Timer(model.decoder), Timer(model.sam.vision_encoder), Timer(model.vision_tower)
    image = Image.fromarray((np.random.RandomState(0).rand(480, 640, 3) * 255).astype(np.uint8))
    started = time.perf_counter()
    prediction = segmenter.predict(image, PROMPT, max_new_tokens=new_tokens, force_seg=True)
    result["predict_s"] = time.perf_counter() - started
    result["new_tokens"] = len(prediction.token_ids)
    result["masks"] = len(prediction.masks)
    result["clip_s"] = tower.spans()[0]
    result["sam_encoder_s"] = sam_encoder.spans()[0]
    result["prompt_tokens"] = decoder.shapes[0][1]
    result["prefill_s"] = decoder.spans()[0]
    # a decode step = one loop iteration of the greedy decoder (decoder + lm_head + argmax + next embedding)
    steps = np.diff(decoder.starts[1 : 1 + len(prediction.token_ids)])
    result["decode_steps_timed"] = len(steps)
    result["decode_s_per_token"] = float(np.median(steps)) if len(steps) else float("nan")
    result["peak_rss_gb"] = peak_rss_bytes() / 1e9
    result["weights_gb"] = sizes["weights_bytes"] / 1e9
    result["peak_rss_ratio"] = result["peak_rss_gb"] / result["weights_gb"]
    result["peak_rss_ratio_above_baseline"] = (result["peak_rss_gb"] - result["baseline_rss_gb"]) / result["weights_gb"]
    # the floor, in the same process with the same weights (after the peak above was read)
    result.update(decode_comparison(model, result["prompt_tokens"], max(new_tokens, 4)))
    return result


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = LISA-7B's shapes")
    parser.add_argument("--workdir", default=None, help="where the checkpoint goes (default: /tmp/reasonseg_real_size_<scale>)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens to generate in the predict")
    parser.add_argument("--skip-8bit", action="store_true")
    parser.add_argument("--measure", choices=["bf16", "8bit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir or f"/tmp/reasonseg_real_size_{args.scale:g}")
    checkpoint = workdir / "lisa-7b-random"
    if args.measure:
        print("RESULT " + json.dumps(measure(checkpoint, args.measure, args.new_tokens)), flush=True)
        return
    if not (checkpoint / "sizes.json").is_file():
        started = time.perf_counter()
        write_lisa_checkpoint(checkpoint, args.scale)
        print(f"written in {time.perf_counter() - started:.0f} s", flush=True)
    sizes = json.loads((checkpoint / "sizes.json").read_text())
    print(f"weights: {sizes['weights_bytes'] / 1e9:.2f} GB (LISA shards {sizes['lisa_bin_bytes'] / 1e9:.2f} GB + CLIP "
          f"{sizes['clip_bytes'] / 1e9:.2f} GB); dims {json.dumps(sizes['dims'])}", flush=True)
    results = []
    for mode in ["bf16"] + ([] if args.skip_8bit else ["8bit"]):
        env = dict(os.environ, HOME=str(workdir / "home"))  # the 8-bit path's converted copy lands in the workdir
        command = [sys.executable, __file__, "--measure", mode, "--workdir", str(workdir), "--scale", str(args.scale),
                   "--new-tokens", str(args.new_tokens)]
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode or not lines:
            print(f"{mode}: failed (exit {completed.returncode})\n{completed.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        results.append(result)
        print(
            f"{mode}: load {result['load_s']:.1f} s | CLIP {result['clip_s']:.2f} s | SAM encoder {result['sam_encoder_s']:.1f} s"
            f" | prefill ({result['prompt_tokens']} tokens) {result['prefill_s']:.2f} s | decode"
            f" {result['decode_s_per_token']:.3f} s/token ({result['decode_steps_timed']} steps)\n"
            f"      same process, best of 3 alternating rounds: prefill {result['ours_prefill_s']:.2f} s vs bare"
            f" LlamaForCausalLM {result['bare_prefill_s']:.2f} s | decode {result['ours_decode_s_per_token']:.3f} vs bare"
            f" {result['bare_decode_s_per_token']:.3f} s/token (x{result['decode_ratio_to_bare']:.2f})\n"
            f"      peak RSS {result['peak_rss_gb']:.2f} GB = {result['peak_rss_ratio']:.2f} x weights"
            f" ({result['peak_rss_ratio_above_baseline']:.2f} x above the {result['baseline_rss_gb']:.2f} GB of imports;"
            f" after load {result['peak_rss_after_load_gb']:.2f} GB)",
            flush=True,
        )
    (workdir / "results.json").write_text(json.dumps({"sizes": sizes, "results": results}, indent=2))
    print(f"results in {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
