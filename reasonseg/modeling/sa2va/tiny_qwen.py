"""A tiny, seeded Sa2VA-Qwen-shaped model built from configs alone: a real Qwen2.5-VL (2 layers of width 64, a
one-block vision tower with 4-px patches merged 2x2) or Qwen3-VL (2 layers of width 64, a two-block vision tower
with 4-px patches merged 2x2 and deepstack features taken after its first block), the tiny SAM2 of :mod:`.tiny`
(256-px input), and a byte-level BPE tokenizer trained in milliseconds with Qwen's special tokens, for tests and
quick checks."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from ...processing.sa2va_qwen import Sa2VAQwenProcessor, Sa2VAQwenProcessorSettings
from ...processing.tokenization import train_byte_level_bpe
from .configuration_sa2va_qwen import Sa2VAQwenConfig
from .modeling_sa2va_qwen import Sa2VAQwenForCausalLM
from .tiny import _CORPUS, TINY_TEXT_SHAPE, randomize_zero_sam2_parts, tiny_sam2_config

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "[SEG]",
]
_SYSTEM = "system You are a helpful assistant."


def build_tiny_sa2va_qwen_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    backend = train_byte_level_bpe((_CORPUS + [_SYSTEM]) * 4, vocab_size, QWEN_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )


def _tiny_qwen_vl_config(tokenizer, model_type: str, text_extra: dict, vision_config: dict) -> dict:
    """The parts both tiny Qwen-VL families share: the tiny Sa2VA text shape, Qwen's special-token ids."""
    ids = tokenizer.get_vocab()
    text_config = dict(
        vocab_size=len(tokenizer),
        **TINY_TEXT_SHAPE,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,
        initializer_range=0.1,
        **text_extra,
    )
    return dict(
        model_type=model_type,
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def tiny_qwen25_vl_config(tokenizer) -> dict:
    return _tiny_qwen_vl_config(
        tokenizer,
        "qwen2_5_vl",
        text_extra=dict(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),  # head dim 16: 8 frequencies
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, window_size=16, fullatt_block_indexes=[0], initializer_range=0.1,
        ),
    )


def tiny_qwen3_vl_config(tokenizer) -> dict:
    return _tiny_qwen_vl_config(
        tokenizer,
        "qwen3_vl",
        text_extra=dict(
            head_dim=16,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=16, deepstack_visual_indexes=[0],
            initializer_range=0.1,
        ),
    )


TINY_VLM_CONFIGS = {"qwen2_5_vl": tiny_qwen25_vl_config, "qwen3_vl": tiny_qwen3_vl_config}


def tiny_sa2va_qwen_config(tokenizer, family: str = "qwen2_5_vl", **overrides) -> Sa2VAQwenConfig:
    values = dict(
        vlm_config=TINY_VLM_CONFIGS[family](tokenizer),
        sam_config=tiny_sam2_config(),
        seg_token_id=tokenizer.convert_tokens_to_ids("[SEG]"),
        initializer_range=0.1,
    )
    values.update(overrides)
    return Sa2VAQwenConfig(**values)


def tiny_sa2va_qwen_settings(family: str = "qwen2_5_vl") -> Sa2VAQwenProcessorSettings:
    """4-px patches merged 2x2 (8-px tokens), 64 to 256 tokens' worth of pixels, a 256-px SAM2 input; Qwen3-VL's
    chat template has no system turn."""
    settings = Sa2VAQwenProcessorSettings(
        min_pixels=8 * 8 * 4, max_pixels=8 * 8 * 64, patch_size=4, merge_size=2, sam_image_size=256
    )
    if family == "qwen3_vl":
        settings.system_message = ""
    return settings


def build_tiny_sa2va_qwen(
    seed: int = 0, family: str = "qwen2_5_vl", **config_overrides
) -> tuple[Sa2VAQwenForCausalLM, Sa2VAQwenProcessor]:
    """A random tiny Sa2VA-Qwen model (``family``: ``"qwen2_5_vl"`` or ``"qwen3_vl"``) and its processor
    (deterministic for a seed)."""
    tokenizer = build_tiny_sa2va_qwen_tokenizer()
    torch.manual_seed(seed)
    model = Sa2VAQwenForCausalLM(tiny_sa2va_qwen_config(tokenizer, family, **config_overrides)).eval()
    randomize_zero_sam2_parts(model.sam)
    return model, Sa2VAQwenProcessor(tokenizer, tiny_sa2va_qwen_settings(family))
