"""InternLM2 (the LLM of Sa2VA-8B/26B, absent from transformers) mapped onto transformers' LLaMA.

InternLM2 is a LLaMA with other names and a fused ``wqkv`` whose rows are grouped per key/value head:
``[kv_heads, q_per_kv + 2, head_dim, hidden]`` (the group's queries, then its key, then its value). Splitting it
gives LLaMA's ``q_proj``/``k_proj``/``v_proj`` in LLaMA's head order. Rotary scaling ``dynamic``/``linear`` maps to
LLaMA's rope types of the same names (identical below ``max_position_embeddings``; above it InternLM2's remote code
keeps the rescaled frequencies for later calls, transformers recomputes them per call).
"""

from __future__ import annotations

import re

import torch

from ...checkpoints.key_renames import RenameTable
from ...errors import CheckpointError

INTERNLM2_KEYS = RenameTable([
    ("language_model.model.tok_embeddings.", "language_model.model.embed_tokens."),
    ("language_model.output.", "language_model.lm_head."),
    ("language_model.model.norm.", "language_model.model.norm."),
    (r"language_model.model.layers.{\d+}.attention.wo.", r"language_model.model.layers.{\d+}.self_attn.o_proj."),
    (r"language_model.model.layers.{\d+}.feed_forward.w1.", r"language_model.model.layers.{\d+}.mlp.gate_proj."),
    (r"language_model.model.layers.{\d+}.feed_forward.w2.", r"language_model.model.layers.{\d+}.mlp.down_proj."),
    (r"language_model.model.layers.{\d+}.feed_forward.w3.", r"language_model.model.layers.{\d+}.mlp.up_proj."),
    (r"language_model.model.layers.{\d+}.attention_norm.", r"language_model.model.layers.{\d+}.input_layernorm."),
    (r"language_model.model.layers.{\d+}.ffn_norm.", r"language_model.model.layers.{\d+}.post_attention_layernorm."),
])
_WQKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)$")


def llama_config_from_internlm2(llm: dict):
    from transformers import LlamaConfig

    rope_scaling = llm.get("rope_scaling")
    rope_parameters = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    if rope_scaling:
        kind = rope_scaling.get("type") or rope_scaling.get("rope_type")
        if kind not in ("dynamic", "linear"):
            raise CheckpointError(f"InternLM2 rope scaling {kind!r} is not supported (dynamic and linear are)")
        rope_parameters.update(rope_type=kind, factor=float(rope_scaling["factor"]))
    config = LlamaConfig(
        vocab_size=llm["vocab_size"],
        hidden_size=llm["hidden_size"],
        intermediate_size=llm["intermediate_size"],
        num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm.get("num_key_value_heads") or llm["num_attention_heads"],
        hidden_act=llm.get("hidden_act", "silu"),
        max_position_embeddings=llm.get("max_position_embeddings", 2048),
        rms_norm_eps=llm.get("rms_norm_eps", 1e-6),
        rope_parameters=rope_parameters,
        attention_bias=bool(llm.get("bias", False)),
        mlp_bias=False,
        bos_token_id=llm.get("bos_token_id", 1),
        eos_token_id=llm.get("eos_token_id", 2),
        pad_token_id=llm.get("pad_token_id", 0),
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        architectures=["LlamaForCausalLM"],
    )
    return config


def split_wqkv(tensor: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's grouped ``wqkv`` (weight ``[(H + 2K) * d, hidden]`` or bias) -> LLaMA's q, k, v."""
    groups = num_heads // num_kv_heads
    head_dim = tensor.shape[0] // (num_heads + 2 * num_kv_heads)
    grouped = tensor.reshape(num_kv_heads, groups + 2, head_dim, *tensor.shape[1:])
    query = grouped[:, :groups].reshape(num_heads * head_dim, *tensor.shape[1:])
    key = grouped[:, -2].reshape(num_kv_heads * head_dim, *tensor.shape[1:])
    value = grouped[:, -1].reshape(num_kv_heads * head_dim, *tensor.shape[1:])
    return query.clone(), key.clone(), value.clone()


def fuse_wqkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """The inverse of :func:`split_wqkv` (for building InternLM2-layout test checkpoints)."""
    groups = num_heads // num_kv_heads
    head_dim = query.shape[0] // num_heads
    rest = query.shape[1:]
    q = query.reshape(num_kv_heads, groups, head_dim, *rest)
    k = key.reshape(num_kv_heads, 1, head_dim, *rest)
    v = value.reshape(num_kv_heads, 1, head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def internlm2_key_to_llama(key: str, tensor: torch.Tensor, text_config):
    """One InternLM2 tensor -> ``[(llama_key, tensor), ...]`` (three for ``wqkv``)."""
    match = _WQKV.match(key)
    if match:
        layer, leaf = match.groups()
        parts = split_wqkv(tensor, text_config.num_attention_heads, text_config.num_key_value_heads)
        prefix = f"language_model.model.layers.{layer}.self_attn"
        return [(f"{prefix}.{name}.{leaf}", part) for name, part in zip(("q_proj", "k_proj", "v_proj"), parts)]
    new_key = INTERNLM2_KEYS.to_native(key)
    if new_key is not None:
        return [(new_key, tensor)]
    raise CheckpointError(f"unexpected InternLM2 tensor {key!r} in the Sa2VA checkpoint")
