"""Tiny, seeded models built from configs alone (no hub): for tests, benchmarks and the out-of-the-box demo.

The tokenizer is a byte-level BPE trained in milliseconds on a small built-in corpus, with ``[SEG]`` added.
"""

from __future__ import annotations

import torch
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

from ..processing.processing_reasonseg import ProcessorSettings, ReasonSegProcessor
from ..processing.tokenization import add_seg_token, train_byte_level_bpe
from .configuration_reasonseg import ReasonSegConfig
from .modeling_reasonseg import ReasonSegForCausalLM

_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: What is the red circle in this image? Please output segmentation mask.",
    "Sure, it is [SEG]. Sure, the segmentation result is [SEG]. They are [SEG] and [SEG].",
    "Which shape could roll away? The blue square, the yellow triangle, the green star, the purple hexagon.",
    "There is no such shape in this image. It is the leftmost shape because it is furthest to the left.",
]


def build_tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    backend = train_byte_level_bpe(_CORPUS * 4, vocab_size, ["<unk>", "<s>", "</s>"], unk_token="<unk>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )
    add_seg_token(tokenizer)
    return tokenizer


def tiny_config(vocab_size: int, seg_token_id: int, **overrides) -> ReasonSegConfig:
    """A few-MB model with every part real: CLIP (56 px, 16 patches), LLaMA (2 layers, 64 wide), SAM (1024 px
    input, 2-block 32-wide encoder, 64-wide prompt encoder and mask decoder)."""
    values = dict(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        ),
        sam_config=dict(
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                global_attn_indexes=[1],
                output_channels=64,
                mlp_dim=64,
                num_pos_feats=32,
                # transformers' SAM default (1e-10) would make a random encoder's features constant
                initializer_range=0.1,
            ),
            prompt_encoder_config=dict(hidden_size=64),
            mask_decoder_config=dict(hidden_size=64, mlp_dim=128, num_attention_heads=4, layer_norm_eps=1e-5),
        ),
        projector_type="mlp2x_gelu",
        seg_token_id=seg_token_id,
        initializer_range=0.1,
    )
    values.update(overrides)
    return ReasonSegConfig(**values)


def build_tiny_model(seed: int = 0, **config_overrides) -> tuple[ReasonSegForCausalLM, ReasonSegProcessor]:
    """A random tiny model and its processor (deterministic for a seed)."""
    tokenizer = build_tiny_tokenizer()
    seg_id = tokenizer.convert_tokens_to_ids("[SEG]")
    torch.manual_seed(seed)
    model = ReasonSegForCausalLM(tiny_config(len(tokenizer), seg_id, **config_overrides)).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    settings = ProcessorSettings(conv_type="llava_v1", tokenizer_style="default", add_bos=True)
    return model, ReasonSegProcessor(tokenizer, image_processor, settings)
