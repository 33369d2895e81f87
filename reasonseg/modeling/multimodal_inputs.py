"""Splicing image features into token embeddings.

Each sequence carries at most one image placeholder id; it is replaced by that image's projected features, so a
sequence of ``L`` tokens becomes ``L - 1 + N`` positions long. Every later step (hidden-state lookup for [SEG],
labels for the loss) goes through the position map returned here instead of a hard-coded offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SplicedInputs:
    """inputs_embeds ``[B, T, H]``, attention_mask ``[B, T]`` (1 = real), position_ids ``[B, T]``,
    token_positions ``[B, L]``: the expanded position of each input token (-1 for the placeholder and padding);
    decoder_kwargs: further inputs the language model takes for exactly these positions (Qwen3-VL's deepstack:
    ``visual_pos_masks`` ``[B, T]`` and ``deepstack_visual_embeds``), or ``None``;
    image_positions ``[B, T]``: True where an image feature was spliced in."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    token_positions: torch.Tensor
    decoder_kwargs: dict | None = None
    image_positions: torch.Tensor | None = None

    def expand_token_values(self, values: torch.Tensor, fill: int) -> torch.Tensor:
        """Move a per-token tensor ``[B, L]`` (e.g. labels) onto the expanded positions ``[B, T]``."""
        out = values.new_full(self.attention_mask.shape, fill)
        rows, cols = torch.nonzero(self.token_positions >= 0, as_tuple=True)
        out[rows, self.token_positions[rows, cols]] = values[rows, cols]
        return out


def splice_image_features(
    token_embeddings: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_features: torch.Tensor | None,
    image_indices: list[int] | None,
    image_token_index: int,
    padding_side: str = "right",
) -> SplicedInputs:
    """Build the language model's input embeddings.

    token_embeddings: ``[B, L, H]`` embeddings of ``input_ids`` (placeholder rows are ignored);
    input_ids / attention_mask: ``[B, L]``; image_features: ``[num_images, N, H]``;
    image_indices: for each sequence, the row of ``image_features`` its placeholder takes.
    ``padding_side="left"`` is for generation (new tokens are appended on the right).
    """
    batch, length, hidden = token_embeddings.shape
    pieces, maps, image_spans = [], [], []
    for row in range(batch):
        keep = attention_mask[row].bool()
        ids = input_ids[row]
        positions = torch.full((length,), -1, dtype=torch.long, device=input_ids.device)
        image_slots = torch.nonzero((ids == image_token_index) & keep).flatten().tolist()
        if len(image_slots) > 1:
            raise ValueError("a sequence may hold at most one image placeholder")
        real = torch.nonzero(keep).flatten()
        start, stop = (int(real[0]), int(real[-1]) + 1) if len(real) else (0, 0)
        if image_slots:
            slot = image_slots[0]
            features = image_features[image_indices[row]].to(token_embeddings.dtype)
            chunks = [token_embeddings[row, start:slot], features, token_embeddings[row, slot + 1 : stop]]
            positions[start:slot] = torch.arange(slot - start, device=ids.device)
            after = slot - start + features.shape[0]
            image_spans.append((slot - start, after))
            positions[slot + 1 : stop] = torch.arange(after, after + stop - slot - 1, device=ids.device)
        else:
            chunks = [token_embeddings[row, start:stop]]
            image_spans.append((0, 0))
            positions[start:stop] = torch.arange(stop - start, device=ids.device)
        pieces.append(torch.cat(chunks, dim=0))
        maps.append(positions)

    total = max(p.shape[0] for p in pieces)
    embeds = token_embeddings.new_zeros((batch, total, hidden))
    mask = attention_mask.new_zeros((batch, total))
    position_ids = torch.zeros((batch, total), dtype=torch.long, device=input_ids.device)
    image_positions = torch.zeros((batch, total), dtype=torch.bool, device=input_ids.device)
    token_positions = torch.stack(maps)
    for row, piece in enumerate(pieces):
        n = piece.shape[0]
        offset = total - n if padding_side == "left" else 0
        embeds[row, offset : offset + n] = piece
        mask[row, offset : offset + n] = 1
        position_ids[row, offset : offset + n] = torch.arange(n, device=input_ids.device)
        first, last = image_spans[row]
        image_positions[row, offset + first : offset + last] = True
        valid = token_positions[row] >= 0
        token_positions[row, valid] += offset
    return SplicedInputs(embeds, mask, position_ids, token_positions, image_positions=image_positions)
