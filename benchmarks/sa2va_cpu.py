"""Sa2VA-4B's shapes on CPU in bf16: loading memory, image encoding, decoding, and a second question.

    .venv/bin/python benchmarks/sa2va_cpu.py [--workdir DIR] [--tokens 16] [--keep]

A random-weight checkpoint with Sa2VA-4B's shapes (InternViT-300M, Qwen2.5-3B, SAM2-Hiera-L; about 7.7 GB in
bf16) is written in Sa2VA's original layout (sharded safetensors, ``config.json`` with ``llm_config``), then a fresh
process loads it through ``Segmenter.from_pretrained`` as a user would and reports (JSON):

* peak RSS after loading and at the end (every weight touched), as ratios to the bytes of the weights (streamed,
  memory-mapped loading keeps these at or below about 1);
* image encoding: InternViT + projector on one 448-px tile, and SAM2's image encoder on the 1024-px input;
* decoding: seconds per token of reasonseg's KV-cached greedy loop, against a bare transformers ``Qwen2ForCausalLM``
  step (the same module called through transformers' own forward with a ``DynamicCache`` of the same length);
* chat: latency of the first question (encodes the image) and of a second one (reuses the image features and the
  KV cache).

Random weights answer nonsense; ``force_seg`` makes each answer end in a mask so SAM2's decoder runs too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def sa2va_4b_config(vocab_size: int, seg_token_id: int):
    from reasonseg.modeling.sa2va import Sa2VAConfig

    hiera_l = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=144,
        num_attention_heads=2,
        blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        window_size_per_stage=[8, 4, 16, 8],
        global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7],
    )
    return Sa2VAConfig(
        vision_config=dict(  # InternViT-300M-448px
            model_type="internvl_vision", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=448, patch_size=14, attention_bias=True, use_qk_norm=False,
            norm_type="layer_norm", use_mean_pooling=True,
        ),
        text_config=dict(  # Qwen2.5-3B-Instruct
            model_type="qwen2", vocab_size=vocab_size, hidden_size=2048, intermediate_size=11008,
            num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
            rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=2, pad_token_id=0,
        ),
        sam_config=dict(
            vision_config=dict(backbone_config=hiera_l, backbone_channel_list=[1152, 576, 288, 144], fpn_hidden_size=256),
            prompt_encoder_config=dict(hidden_size=256),
            mask_decoder_config=dict(hidden_size=256),
        ),
        seg_token_id=seg_token_id,
    )


def write_checkpoint(directory: Path, vocab_size: int = 151674) -> None:
    """Random bf16 weights of every tensor, written shard by shard in Sa2VA's layout (one shard in memory)."""
    from reasonseg.checkpoints.materialize import build_on_meta
    from reasonseg.checkpoints.sa2va import save_sa2va_layout
    from reasonseg.modeling.sa2va import Sa2VAForCausalLM
    from reasonseg.modeling.sa2va.tiny import build_tiny_sa2va_tokenizer

    tokenizer = build_tiny_sa2va_tokenizer()
    config = sa2va_4b_config(vocab_size, tokenizer.convert_tokens_to_ids("[SEG]"))
    skeleton = build_on_meta(Sa2VAForCausalLM, config)
    generator = torch.Generator().manual_seed(0)

    def items():
        for key, meta in skeleton.state_dict().items():
            if key.endswith("rotary_emb.inv_freq") or key.endswith("original_inv_freq"):
                continue
            if meta.dim() <= 1 and ("norm" in key or "lambda" in key):
                yield key, torch.ones(meta.shape, dtype=torch.bfloat16)
            else:
                yield key, (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.bfloat16)

    save_sa2va_layout(items(), config, tokenizer, directory)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(directory: Path, tokens: int) -> dict:
    import numpy as np
    from PIL import Image

    from reasonseg import Segmenter
    from reasonseg.inference.generation import greedy_decode, kv_cache_kwargs

    weight_bytes = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    start = time.perf_counter()
    segmenter = Segmenter.from_pretrained(str(directory), precision="bf16", device="cpu")
    load_s = time.perf_counter() - start
    rss_after_load = peak_rss_bytes()
    model, processor = segmenter.model, segmenter.processor

    image = Image.fromarray((np.random.RandomState(0).rand(448, 448, 3) * 255).astype(np.uint8))
    inputs = processor.preprocess_image(image)
    with torch.no_grad():
        start = time.perf_counter()
        features = model.encode_images(inputs.pixel_values)
        vision_s = time.perf_counter() - start
        start = time.perf_counter()
        model.encode_sam_images(inputs.sam_pixel_values)
        sam_s = time.perf_counter() - start

    # reasonseg's decoding loop: prefill + `tokens` steps, no EOS
    ids = torch.tensor([processor.encode(processor.conversation_prompt([("Please segment the blood vessel.", None)]))])
    spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left")
    args = (model.decoder, model.get_output_embeddings(), model.get_input_embeddings(), spliced.inputs_embeds,
            spliced.attention_mask, spliced.position_ids)
    start = time.perf_counter()
    greedy_decode(*args, max_new_tokens=1, eos_token_id=None)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    result = greedy_decode(*args, max_new_tokens=tokens + 1, eos_token_id=None)
    ours_per_token = (time.perf_counter() - start - prefill_s) / tokens

    # a bare transformers Qwen2 step of the same shape: the same module through its own forward + DynamicCache
    from transformers import DynamicCache

    lm = model.language_model
    with torch.no_grad():
        cache = DynamicCache()
        lm(inputs_embeds=spliced.inputs_embeds, **kv_cache_kwargs(lm, cache), use_cache=True)
        token = torch.tensor([[result.new_ids[0][0]]])
        length = spliced.inputs_embeds.shape[1]
        start = time.perf_counter()
        for step in range(tokens):
            out = lm(input_ids=token, **kv_cache_kwargs(lm, cache), use_cache=True,
                     position_ids=torch.tensor([[length + step]]))
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        bare_per_token = (time.perf_counter() - start) / tokens

    session = segmenter.chat(image)
    start = time.perf_counter()
    first = session.ask("Please segment the blood vessel.", max_new_tokens=tokens, force_seg=True)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = session.ask("And the other one?", max_new_tokens=tokens, force_seg=True)
    second_s = time.perf_counter() - start

    return {
        "weights_gb": round(weight_bytes / 1e9, 2),
        "load_s": round(load_s, 1),
        "peak_rss_after_load_gb": round(rss_after_load / 1e9, 2),
        "peak_rss_over_weights": round(rss_after_load / weight_bytes, 2),
        "peak_rss_end_gb": round(peak_rss_bytes() / 1e9, 2),
        "peak_rss_end_over_weights": round(peak_rss_bytes() / weight_bytes, 2),
        "prompt_tokens": int(spliced.inputs_embeds.shape[1]),
        "encode_internvit_1_tile_s": round(vision_s, 2),
        "encode_sam2_hiera_l_s": round(sam_s, 2),
        "prefill_s": round(prefill_s, 2),
        "decode_s_per_token": round(ours_per_token, 3),
        "bare_qwen2_step_s_per_token": round(bare_per_token, 3),
        "decode_over_bare": round(ours_per_token / bare_per_token, 2),
        "first_question_s": round(first_s, 1),
        "second_question_s": round(second_s, 1),
        "second_over_first": round(second_s / first_s, 3),
        "answer_tokens": [len(first.token_ids), len(second.token_ids)],
        "masks": [first.num_masks, second.num_masks],
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where the random checkpoint goes (default: a temp dir)")
    parser.add_argument("--tokens", type=int, default=16, help="decoded tokens per measurement")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.tokens)))
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sa2va4b-"))
    directory = workdir / "sa2va-4b-random"
    if not (directory / "config.json").is_file():
        start = time.perf_counter()
        write_checkpoint(directory)
        print(f"wrote {directory} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    # a fresh process, so its peak RSS is the loading and inference alone
    child = subprocess.run(
        [sys.executable, __file__, "--measure", str(directory), "--tokens", str(args.tokens)],
        capture_output=True, text=True, env=dict(os.environ),
    )
    if child.returncode != 0:
        print(child.stderr[-3000:], file=sys.stderr)
        return child.returncode
    print(json.dumps(json.loads(child.stdout.strip().splitlines()[-1]), indent=2))
    if not args.keep and args.workdir is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
