"""Greedy decoding with a KV cache that keeps the hidden states [SEG] tokens need.

Each step feeds only the new token(s); the decoder's last hidden state (after the final norm) at the fed position
is both the input of ``lm_head`` and the state a [SEG] may need, so nothing is recomputed and nothing extra kept
beyond one ``[hidden]`` vector per step.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache as _memoised

import torch
from transformers import DynamicCache

from ..modeling.image_attention import decoder_attention_mask


@dataclass
class DecodeResult:
    """new_ids: generated ids per row (the stop token included when produced);
    step_states: per row ``[steps, hidden]`` float32, row ``t`` = the state that predicted ``new_ids[t]``;
    cache: the KV cache holding the prompt and every generated token but the last;
    next_positions ``[B]`` (``[3, B]`` for M-RoPE): the position of that last, not yet fed, token;
    attention_mask: the mask of the cache."""

    new_ids: list[list[int]]
    step_states: list[torch.Tensor]
    cache: object | None = None
    next_positions: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


@_memoised
def _cache_parameter(module_type: type) -> str:
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"


def kv_cache_kwargs(module, cache) -> dict:
    """``{name: cache}`` under the name ``module``'s forward takes its KV cache by: ``cache`` from transformers 5.25
    on (where ``past_key_values`` warns on every call and is to be removed in 5.40), ``past_key_values`` before."""
    return {_cache_parameter(type(module)): cache}


def decoder_step(decoder, embeds, attention_mask, position_ids, cache, extra=None) -> torch.Tensor:
    """One decoder call over ``embeds``, through ``cache`` when one is given (which it extends); the last hidden
    states ``[B, T, hidden]``. ``extra``: further decoder inputs (e.g. Qwen-VL's visual position masks)."""
    out = decoder(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **kv_cache_kwargs(decoder, cache),
        use_cache=cache is not None,
        **(extra or {}),
    )
    return out.last_hidden_state


def _pad_as_text(positions: torch.Tensor, length: int) -> torch.Tensor:
    """A per-position mask ``[B, T]`` of the prompt, padded with ``False`` on the right to ``length`` positions
    (generated tokens are text)."""
    return torch.cat([positions, positions.new_zeros((positions.shape[0], length - positions.shape[1]))], dim=1)


def extend_prefill_kwargs(prefill_kwargs: dict | None, length: int) -> dict | None:
    """The prompt's extra decoder inputs for a recomputed sequence of ``length`` positions: a ``visual_pos_masks``
    ``[B, T]`` is padded with ``False`` on the right (generated tokens are text), the rest passes unchanged."""
    if not prefill_kwargs or "visual_pos_masks" not in prefill_kwargs:
        return prefill_kwargs
    return {**prefill_kwargs, "visual_pos_masks": _pad_as_text(prefill_kwargs["visual_pos_masks"], length)}


def first_row_position(next_positions: torch.Tensor) -> int:
    """The next position of row 0 as one int (``[B]`` or M-RoPE's ``[3, B]``, whose axes agree after text)."""
    return int(next_positions[..., 0].reshape(-1)[0])


def stop_id_list(stop_ids: int | Iterable[int] | None) -> list[int]:
    """One stop id, several (a list, tuple or set) or none -> a sorted list without repeats or ``None``s."""
    if stop_ids is None:
        return []
    if not isinstance(stop_ids, Iterable):  # an int (or a numpy integer)
        return [int(stop_ids)]
    return sorted({int(i) for i in stop_ids if i is not None})


@torch.no_grad()
def greedy_decode(
    decoder,
    lm_head,
    embed_tokens,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None,
    cache=None,
    use_cache: bool = True,
    prefill_kwargs: dict | None = None,
    image_positions: torch.Tensor | None = None,
) -> DecodeResult:
    """Greedy decoding of a (left-padded) batch.

    inputs_embeds ``[B, T, H]``, attention_mask / position_ids ``[B, T]``: the new input (the whole prompt, or a
    continuation when ``cache`` already holds earlier turns; then attention_mask covers cache + input).
    position_ids may carry leading axes (Qwen-VL's M-RoPE: ``[3, B, T]``, temporal/height/width); each generated
    token takes the last position + 1 on every axis, as a text token after the prompt does.
    ``eos_token_id``: the stop token, or several (a row ends at the first of them it produces; Sa2VA's Qwen
    template stops at ``<|im_end|>`` and ``<|endoftext|>``); ``None`` decodes ``max_new_tokens`` tokens.
    ``use_cache=False`` recomputes the whole sequence every step (the reference behaviour, kept for checking).
    ``prefill_kwargs``: further decoder inputs for the positions of ``inputs_embeds`` only (``SplicedInputs.
    decoder_kwargs``: Qwen3-VL's deepstack features, added at the image positions); passed on the first step, and on
    every uncached step with the mask extended over the generated tokens.
    ``image_positions`` ``[B, T]``: for a model with ``image_attention="bidirectional"``, True at the image positions
    of ``inputs_embeds``; they see each other both ways whenever they are computed (later tokens are causal).
    """
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    if use_cache and cache is None:
        cache = DynamicCache()
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    states: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    stops = stop_id_list(eos_token_id)
    stop_tensor = torch.tensor(stops, dtype=torch.long, device=device)
    next_positions = position_ids[..., -1] + 1

    step_embeds, step_positions, full_mask = inputs_embeds, position_ids, attention_mask
    all_embeds, all_positions = inputs_embeds, position_ids
    for step in range(max_new_tokens):
        if use_cache:
            extra = prefill_kwargs if step == 0 else None
            mask = full_mask
            if step == 0:
                mask = decoder_attention_mask(full_mask, image_positions, step_embeds.shape[1], decoder.config,
                                              inputs_embeds.dtype)
            hidden = decoder_step(decoder, step_embeds, mask, step_positions, cache, extra)
        else:
            extra = extend_prefill_kwargs(prefill_kwargs, all_embeds.shape[1])
            positions = None if image_positions is None else _pad_as_text(image_positions, all_embeds.shape[1])
            mask = decoder_attention_mask(full_mask, positions, None, decoder.config, inputs_embeds.dtype)
            hidden = decoder_step(decoder, all_embeds, mask, all_positions, None, extra)
        last = hidden[:, -1]
        token = lm_head(last).argmax(dim=-1)
        for row in range(batch):
            if not finished[row]:
                new_ids[row].append(int(token[row]))
                states[row].append(last[row].float())
        if stops:
            finished |= torch.isin(token, stop_tensor.to(token.device))
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        step_embeds = embed_tokens(token.unsqueeze(1)).to(inputs_embeds.dtype)
        step_positions = next_positions.unsqueeze(-1)
        next_positions = next_positions + 1
        full_mask = torch.cat([full_mask, full_mask.new_ones((batch, 1))], dim=1)
        if not use_cache:
            all_embeds = torch.cat([all_embeds, step_embeds], dim=1)
            all_positions = torch.cat([all_positions, step_positions], dim=-1)
    return DecodeResult(
        new_ids=new_ids,
        step_states=[torch.stack(s) if s else inputs_embeds.new_zeros((0, inputs_embeds.shape[-1])) for s in states],
        cache=cache,
        next_positions=next_positions,
        attention_mask=full_mask,
    )
