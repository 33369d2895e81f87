"""LLaVA's delta releases (e.g. ``liuhaotian/LLaVA-Lightning-7B-delta-v1-1``) applied to a base LLaMA.

The rule is LLaVA's own ``apply_delta``: the target's tensors are the delta's; where the base holds a tensor of the
same name and shape it is added; ``embed_tokens`` / ``lm_head``, which the delta grows by the added tokens, get the
base added on the overlapping block (the new rows stay the delta's values); the projector (``model.mm_projector.*``),
which the base lacks, is the delta's as is. Both operands are cast to the target dtype before the addition, as LLaVA
loads both in its dtype, so a tensor's sum is rounded once.

It streams: the delta is read one shard at a time, each base tensor is read when its delta partner arrives, and
every sum is handed on at once, so the result is the only full copy held. Shards are memory-mapped, and the pages
read from a mapping count as the process's memory until it is closed, so the mappings are reopened after every
``REMAP_BYTES`` read (cheap: only the index is parsed again): beyond the result, at most that much is resident.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import CheckpointError
from .state_dicts import TensorIndex, load_tensor_file, weight_files

# tensors only the delta has (LLaVA's apply_delta allows exactly the projector)
DELTA_ONLY = re.compile(r"^model\.mm_projector\.")
# tensors whose leading block is shared with the base (the vocabulary grows)
GROWABLE = ("model.embed_tokens.weight", "lm_head.weight")
# buffers transformers 4.x saved that are recomputed, never added
RECOMPUTED = re.compile(r"rotary_emb\.inv_freq$")
REMAP_BYTES = 256 * 2**20


def iter_delta_applied(
    base_dir: str | Path, delta_dir: str | Path, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, base + delta)`` for every tensor of the delta (LLaVA key names), in the delta's order.

    ``dtype``: the target's dtype (default: each delta tensor's own). Raises a one-line :class:`CheckpointError`
    naming the first tensor that does not fit: a delta tensor the base lacks (other than the projector), a shape
    mismatch outside the embeddings, or a base tensor the delta lacks.
    """
    base_dir, delta_dir = Path(base_dir), Path(delta_dir)
    base = TensorIndex(base_dir)
    used: set[str] = set()
    try:
        for key, delta in _remapped_tensors(delta_dir, base):
            if RECOMPUTED.search(key):
                continue
            target = dtype or delta.dtype
            if key not in base:
                if DELTA_ONLY.match(key):
                    yield key, delta.to(target, copy=True)
                    continue
                raise CheckpointError(
                    f"{key} is in the delta {delta_dir} but not in the base {base_dir}; is the base the LLaMA this delta "
                    "was made from (transformers layout: model.layers.*, lm_head)?"
                )
            used.add(key)
            original = base.get(key)
            if original.shape == delta.shape:
                yield key, torch.add(delta.to(target), original.to(target))
            elif key in GROWABLE and original.dim() == delta.dim() == 2 and all(
                b <= d for b, d in zip(original.shape, delta.shape)
            ):
                merged = delta.to(target, copy=True)
                rows, cols = original.shape
                merged[:rows, :cols] += original.to(target)
                yield key, merged
            else:
                raise CheckpointError(
                    f"{key}: the delta's shape {tuple(delta.shape)} does not match the base's {tuple(original.shape)}; "
                    "is the base the LLaMA this delta was made from?"
                )
            del original, delta
        missing = sorted(k for k in base.keys() if k not in used and not RECOMPUTED.search(k))
        if missing:
            raise CheckpointError(
                f"the delta {delta_dir} lacks {len(missing)} tensor(s) of the base (e.g. {', '.join(missing[:3])}); "
                "is it a LLaVA delta of this base?"
            )
    finally:
        base.close()


def _remapped_tensors(directory: Path, base: TensorIndex):
    """``(key, tensor)`` of every shard of ``directory``, reopening the shard (and dropping the base's mappings)
    after each ``REMAP_BYTES`` read, so pages already used stop counting. Yielded tensors must not be kept."""
    for path in weight_files(directory):
        shard = load_tensor_file(path)
        keys, read = list(shard), 0
        for key in keys:
            if read >= REMAP_BYTES:
                del shard
                base.close()
                shard, read = load_tensor_file(path), 0
            tensor = shard[key]
            read += tensor.numel() * tensor.element_size()
            yield key, tensor
            del tensor
        del shard


def apply_delta(
    base_dir: str | Path, delta_dir: str | Path, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """All of :func:`iter_delta_applied` as one state dict (LLaVA names): for inspection and small models."""
    return dict(iter_delta_applied(base_dir, delta_dir, dtype))

