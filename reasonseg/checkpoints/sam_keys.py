"""Original segment-anything tensors -> transformers ``SamModel`` names and config.

The released SAM ``.pth`` files and LISA's ``visual_model`` use segment-anything's module names and store no
hyper-parameters, so the image-encoder shape is read off the tensors.
"""

from __future__ import annotations

import re

import torch
from transformers import SamConfig

# (pattern, replacement) applied in order to a key relative to the SAM root
_RENAMES = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^vision_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "shared_image_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
]
_MLP_KEY = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.+)$")


def rename_sam_key(key: str, mlp_depth: int = 3) -> str:
    """One segment-anything key (relative to the SAM root) -> its ``SamModel`` name.

    segment-anything's MLPs number their layers ``0..depth-1``; transformers names them ``proj_in``,
    ``layers.0..depth-3`` and ``proj_out``.
    """
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    match = _MLP_KEY.match(key)
    if match:
        prefix, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if index == 0:
            return f"{prefix}.proj_in.{rest}"
        if index == mlp_depth - 1:
            return f"{prefix}.proj_out.{rest}"
        return f"{prefix}.layers.{index - 1}.{rest}"
    return key


def convert_sam_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segment-anything state dict (keys relative to the SAM root) -> ``SamModel`` state dict."""
    converted = {rename_sam_key(k): v for k, v in state_dict.items()}
    shared = converted.get("shared_image_embedding.positional_embedding")
    if shared is not None:
        converted["prompt_encoder.shared_embedding.positional_embedding"] = shared
    return converted


def infer_sam_config(state_dict: dict[str, torch.Tensor], image_size: int = 1024) -> SamConfig:
    """Read the image-encoder shape off segment-anything tensors (keys relative to the SAM root).

    depth = number of blocks; width = patch-embedding output channels; head dim = columns of ``rel_pos_h``;
    global-attention blocks = those whose ``rel_pos_h`` has ``2 * (image_size / patch) - 1`` rows (windowed blocks
    have ``2 * window - 1``).
    """
    patch = state_dict["image_encoder.patch_embed.proj.weight"]
    width, _, patch_size, _ = patch.shape
    blocks = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")})
    depth = len(blocks)
    grid = image_size // patch_size
    head_dim = state_dict["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_blocks, window = [], 14
    for block in blocks:
        rows = state_dict[f"image_encoder.blocks.{block}.attn.rel_pos_h"].shape[0]
        if rows == 2 * grid - 1:
            global_blocks.append(block)
        else:
            window = (rows + 1) // 2
    mlp_dim = state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]
    out_channels = state_dict["image_encoder.neck.0.weight"].shape[0]
    decoder_depth = len({k.split(".")[3] for k in state_dict if k.startswith("mask_decoder.transformer.layers.")})
    decoder_mlp = state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
    num_mask_tokens = state_dict["mask_decoder.mask_tokens.weight"].shape[0]
    return SamConfig(
        vision_config=dict(
            hidden_size=width,
            num_hidden_layers=depth,
            num_attention_heads=width // head_dim,
            image_size=image_size,
            patch_size=patch_size,
            window_size=window,
            global_attn_indexes=global_blocks,
            mlp_dim=mlp_dim,
            output_channels=out_channels,
            layer_norm_eps=1e-6,
        ),
        prompt_encoder_config=dict(hidden_size=out_channels, image_size=image_size, patch_size=patch_size),
        # segment-anything's two-way transformer uses nn.LayerNorm's default eps
        mask_decoder_config=dict(
            hidden_size=out_channels,
            num_hidden_layers=decoder_depth,
            mlp_dim=decoder_mlp,
            num_multimask_outputs=num_mask_tokens - 1,
            layer_norm_eps=1e-5,
        ),
    )
