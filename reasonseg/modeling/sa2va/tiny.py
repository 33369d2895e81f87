"""A tiny, seeded Sa2VA-shaped model built from configs alone: every part real (InternViT, Qwen2, SAM2), small
tiles (56 px) and a small SAM2 input (256 px), for tests and quick checks. The tokenizer is a byte-level BPE
trained in milliseconds with Sa2VA's special tokens."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from ...processing.sa2va import Sa2VAProcessor, Sa2VAProcessorSettings
from ...processing.tokenization import train_byte_level_bpe
from .configuration_sa2va import Sa2VAConfig
from .modeling_sa2va import Sa2VAForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "[SEG]"]
_CORPUS = [
    "user assistant Please segment the blood vessel. Segment the blue circle and the green square.",
    "Sure, [SEG]. Sure, [SEG] and [SEG]. It is [SEG]. What color is the background? Pink.",
    "Could you segment the object on the left? And the other one? The red star, the yellow box.",
]


def build_tiny_sa2va_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    backend = train_byte_level_bpe(_CORPUS * 4, vocab_size, SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )


def tiny_sam2_config() -> dict:
    """A tiny SAM2 (256-px input, four Hiera stages of width 8-64, 32-wide prompts) as a ``Sam2Config`` dict."""
    return dict(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=8,
                num_attention_heads=1,
                image_size=[256, 256],
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 2, 4, 8],
                window_size_per_stage=[4, 4, 4, 4],
                global_attention_blocks=[3],
                window_positional_embedding_background_size=[4, 4],
                initializer_range=0.1,
            ),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
            fpn_hidden_size=32,
            initializer_range=0.1,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=256, patch_size=16, mask_input_channels=16),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32),
        initializer_range=0.1,
    )


# the text model of every tiny Sa2VA (InternVL family and Qwen-VL): 2 layers, 64 wide, 4 query / 2 key-value heads
TINY_TEXT_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)


def tiny_sa2va_config(vocab_size: int, seg_token_id: int, **overrides) -> Sa2VAConfig:
    values = dict(
        vision_config=dict(
            model_type="internvl_vision",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            attention_bias=True,
            use_mean_pooling=True,
            initializer_range=0.1,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=vocab_size,
            eos_token_id=2,
            pad_token_id=0,
            **TINY_TEXT_SHAPE,
        ),
        sam_config=tiny_sam2_config(),
        seg_token_id=seg_token_id,
        initializer_range=0.1,
    )
    values.update(overrides)
    return Sa2VAConfig(**values)


def tiny_sam2_hints() -> dict:
    """The tiny SAM2's head counts, windows and sizes in the form a Sa2VA-layout ``config.json`` carries them
    (``fixture_sam2_config``), for writing the tiny model in Sa2VA's layout."""
    return {
        "image_encoder": {
            "num_heads": 1, "head_mul": 2.0, "global_att_blocks": [3], "window_spec": [4, 4, 4, 4],
            "q_stride": [2, 2], "q_pool": 3, "scalp": 1, "neck": {"fpn_top_down_levels": [2, 3]},
        },
        "fixed_in_sa2va_code": {"image_size": 256, "mask_decoder": {"transformer_num_heads": 4}},
    }


def randomize_zero_sam2_parts(sam) -> None:
    """Random values for the SAM2 parameters transformers zero-initialises (so every part matters in tests), and one
    random-Fourier matrix, as in SAM2 (transformers draws the two copies separately)."""
    with torch.no_grad():
        for parameter in (sam.no_memory_embedding, sam.vision_encoder.backbone.pos_embed,
                          sam.vision_encoder.backbone.pos_embed_window):
            parameter.normal_(0, 0.1)
        sam.prompt_encoder.shared_embedding.positional_embedding.copy_(sam.shared_image_embedding.positional_embedding)


def build_tiny_sa2va(seed: int = 0, **config_overrides) -> tuple[Sa2VAForCausalLM, Sa2VAProcessor]:
    """A random tiny Sa2VA model and its processor (deterministic for a seed)."""
    tokenizer = build_tiny_sa2va_tokenizer()
    seg_id = tokenizer.convert_tokens_to_ids("[SEG]")
    torch.manual_seed(seed)
    model = Sa2VAForCausalLM(tiny_sa2va_config(len(tokenizer), seg_id, **config_overrides)).eval()
    with torch.no_grad():  # transformers zero-initialises these; random values make every part matter
        for parameter in (model.vision_tower.embeddings.cls_token, model.vision_tower.embeddings.position_embeddings):
            parameter.normal_(0, 0.1)
    randomize_zero_sam2_parts(model.sam)
    settings = Sa2VAProcessorSettings(template="qwen_chat", tile_size=56, max_tiles=4, sam_image_size=256)
    return model, Sa2VAProcessor(tokenizer, settings)
