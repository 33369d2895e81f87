"""How the image tokens of a sequence attend to each other inside the causal language model.

``"causal"`` (LLaVA, LISA, Sa2VA): every position sees only what comes before it, image tokens included, so a patch
early in reading order never sees the patches after it. ``"bidirectional"``: the image tokens form one block in which
every image token sees every other (the rest stays causal, as in PaliGemma's prefix and Gemma 3's image blocks);
a patch can then tell whether a larger or further-left object is elsewhere in the picture. Models trained one way
must be run the same way: the mode is part of the model's config.
"""

from __future__ import annotations

import torch

from ..errors import InputError

IMAGE_ATTENTION_MODES = ("causal", "bidirectional")
_MASK_IMPLEMENTATIONS = ("sdpa", "eager")


def check_image_attention(mode: str) -> None:
    if mode not in IMAGE_ATTENTION_MODES:
        raise InputError(f"image_attention {mode!r}: use one of {', '.join(IMAGE_ATTENTION_MODES)}")


def image_block_attention_mask(
    attention_mask: torch.Tensor,
    image_positions: torch.Tensor,
    query_length: int | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The 4D mask ``[B, 1, q, K]`` transformers' decoders take as-is, for the last ``q`` of ``K`` positions.

    attention_mask ``[B, K]``: 1 for real positions (cache and new input), 0 for padding;
    image_positions ``[B, K]`` (or ``[B, q]``, the new input only): True at image tokens.
    Allowed: real keys that are at or before the query, or image keys when the query is an image token. A padding
    query attends to itself only, so no row is empty (an empty row would give NaN states). ``sdpa`` takes a boolean
    mask (True = attend), ``eager`` an additive one in ``dtype``.
    """
    if attn_implementation not in _MASK_IMPLEMENTATIONS:
        raise InputError(f"image_attention='bidirectional' needs attn_implementation sdpa or eager, not "
                         f"{attn_implementation!r}; load the model with attn_implementation='sdpa'")
    batch, keys = attention_mask.shape
    queries = keys if query_length is None else query_length
    device = attention_mask.device
    image = image_positions.to(device=device, dtype=torch.bool)
    if image.shape[1] < keys:
        image = torch.cat([image.new_zeros((batch, keys - image.shape[1])), image], dim=1)
    key_index = torch.arange(keys, device=device)
    query_index = key_index[keys - queries :]
    causal = key_index[None, :] <= query_index[:, None]
    same_block = image[:, keys - queries :, None] & image[:, None, :]
    real = attention_mask.to(device).bool()
    allowed = (causal[None] | same_block) & real[:, None, :]
    allowed |= (key_index[None, :] == query_index[:, None])[None] & ~real[:, keys - queries :, None]
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def decoder_attention_mask(
    attention_mask: torch.Tensor,
    image_positions: torch.Tensor | None,
    query_length: int | None,
    text_config,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """What a decoder with ``text_config`` takes as its mask: ``attention_mask`` itself when ``image_positions`` is
    ``None`` (a causal model), else the image-block mask for that config's attention kernel."""
    if image_positions is None:
        return attention_mask
    return image_block_attention_mask(attention_mask, image_positions, query_length,
                                      text_config._attn_implementation, dtype)
