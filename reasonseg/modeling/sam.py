"""The mask side: SAM image embeddings, one mask per [SEG] prompt, and mask post-processing.

Built on ``transformers.SamModel``; this module only adds the [SEG]-as-prompt convention (one sparse embedding and
the no-mask dense embedding per [SEG]) and the original SAM up-sampling chain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel

from .placement import execution_device

SAM_POSITIONAL_SCALE = 1.0


def build_sam_model(config: SamConfig) -> SamModel:
    """``SamModel(config)`` with SAM's own initialisation of the random Fourier positional encoding (std 1).

    transformers sets that std to ``hidden_size // 2`` (64 for a 128-wide encoder): frequencies so high that a point's
    encoding matches no image position, and a model trained from scratch learns to ignore its prompts (it outlines
    every object). Loaded checkpoints overwrite the values, so this matters only for models that start untrained.
    """
    config.vision_config.scale = SAM_POSITIONAL_SCALE
    return SamModel(config)


def sam_image_embeddings(sam: SamModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, 3, S, S]`` normalised, padded SAM input -> ``[B, C, S/16, S/16]`` image embeddings (with gradients)."""
    encoder = sam.vision_encoder
    dtype = encoder.patch_embed.projection.weight.dtype
    return encoder(pixel_values.to(dtype)).last_hidden_state


def decode_seg_masks(
    sam: SamModel, image_embedding: torch.Tensor, prompt_embeddings: torch.Tensor, mask_selection: str = "first"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one low-resolution mask per prompt embedding, all for the same image, in one decoder call.

    image_embedding: ``[1, C, h, w]``; prompt_embeddings: ``[n, C]`` (one per [SEG]).
    Returns low-res mask logits ``[n, 4h, 4w]`` and predicted IoU ``[n]``.
    ``mask_selection="first"`` asks for the single-mask output (``multimask_output=False``);
    ``"best_iou"`` asks for the three candidates and keeps the one with the highest predicted IoU.
    """
    decoder_dtype = sam.mask_decoder.iou_token.weight.dtype
    num_prompts = prompt_embeddings.shape[0]
    _, channels, height, width = image_embedding.shape
    # Several masks of one image go on the point-batch axis: [1, n, 1 token, C].
    sparse = prompt_embeddings.to(decoder_dtype).reshape(1, num_prompts, 1, channels)
    # modules are called (not their weights read) so that offloading hooks can bring the weights in
    no_mask = sam.prompt_encoder.no_mask_embed
    no_mask_index = torch.zeros(1, dtype=torch.long, device=execution_device(no_mask))
    dense = no_mask(no_mask_index).to(decoder_dtype).reshape(1, -1, 1, 1).expand(1, -1, height, width)
    positions = image_wide_positional_embeddings(sam, height).to(decoder_dtype)
    multimask = mask_selection == "best_iou"
    masks, iou = sam.mask_decoder(
        image_embeddings=image_embedding.to(decoder_dtype),
        image_positional_embeddings=positions,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )[:2]
    masks, iou = masks[0], iou[0]  # [n, k, H, W], [n, k]
    if multimask:
        best = iou.argmax(dim=-1)
        index = torch.arange(num_prompts, device=masks.device)
        return masks[index, best], iou[index, best]
    return masks[:, 0], iou[:, 0]


def image_wide_positional_embeddings(sam: SamModel, size: int) -> torch.Tensor:
    """SAM's dense positional encoding of the ``size x size`` embedding grid: ``[1, C, size, size]``."""
    device = execution_device(sam.shared_image_embedding)
    steps = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    grid_y, grid_x = torch.meshgrid(steps, steps, indexing="ij")
    encoded = sam.shared_image_embedding(torch.stack([grid_x, grid_y], dim=-1))
    return encoded.permute(2, 0, 1).unsqueeze(0)


def upscale_mask_logits(
    low_res_logits: torch.Tensor, resized_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> torch.Tensor:
    """SAM's post-processing: bilinear to ``image_size``, crop the padding, bilinear to the original size.

    low_res_logits: ``[n, h, w]``; returns float32 logits ``[n, H, W]`` at the original image size.
    """
    if low_res_logits.shape[0] == 0:
        return low_res_logits.new_zeros((0, *original_size), dtype=torch.float32)
    logits = low_res_logits.float().unsqueeze(1)
    logits = F.interpolate(logits, (image_size, image_size), mode="bilinear", align_corners=False)
    logits = logits[..., : resized_size[0], : resized_size[1]]
    logits = F.interpolate(logits, tuple(original_size), mode="bilinear", align_corners=False)
    return logits[:, 0]
