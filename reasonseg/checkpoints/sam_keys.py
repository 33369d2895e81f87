"""Original segment-anything tensors -> transformers ``SamModel`` names and config.

The released SAM ``.pth`` files and LISA's ``visual_model`` use segment-anything's module names and store no
hyper-parameters, so the image-encoder shape is read off the tensors.
"""

from __future__ import annotations

import re

import torch
from transformers import SamConfig

from .key_renames import RenameTable

# segment-anything name <-> SamModel name, relative to the SAM root; keys no rule names are the same in both
SAM_KEYS = RenameTable([
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    (r"image_encoder.blocks.{\d+}.norm{\d}.", r"vision_encoder.layers.{\d+}.layer_norm{\d}."),
    ("image_encoder.blocks.", "vision_encoder.layers."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("image_encoder.", "vision_encoder."),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.", "prompt_encoder.point_embed."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    (r"mask_decoder.transformer.layers.{\d+}.norm{\d}.", r"mask_decoder.transformer.layers.{\d+}.layer_norm{\d}."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
])
_MLP_HEAD = r"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
_MLP_KEY = re.compile(rf"^{_MLP_HEAD}\.layers\.(\d+)\.(.+)$")
_NATIVE_MLP_KEY = re.compile(rf"^{_MLP_HEAD}\.(proj_in|proj_out|layers\.\d+)\.(.+)$")
TIED_POSITIONAL_COPY = "prompt_encoder.shared_embedding.positional_embedding"


def rename_sam_key(key: str, mlp_depth: int = 3) -> str:
    """One segment-anything key (relative to the SAM root) -> its ``SamModel`` name.

    segment-anything's MLPs number their layers ``0..depth-1``; transformers names them ``proj_in``,
    ``layers.0..depth-3`` and ``proj_out``.
    """
    match = _MLP_KEY.match(key)
    if match:
        prefix, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if index == 0:
            return f"{prefix}.proj_in.{rest}"
        if index == mlp_depth - 1:
            return f"{prefix}.proj_out.{rest}"
        return f"{prefix}.layers.{index - 1}.{rest}"
    return SAM_KEYS.to_native(key) or key


def segment_anything_key(key: str, mlp_depth: int = 3) -> str | None:
    """A ``SamModel`` key -> its segment-anything name (None for transformers' tied copy of the positional matrix)."""
    if key == TIED_POSITIONAL_COPY:
        return None
    match = _NATIVE_MLP_KEY.match(key)
    if match:
        prefix, name, rest = match.groups()
        index = 0 if name == "proj_in" else (mlp_depth - 1 if name == "proj_out" else int(name.split(".")[1]) + 1)
        return f"{prefix}.layers.{index}.{rest}"
    return SAM_KEYS.to_original(key) or key


def convert_sam_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segment-anything state dict (keys relative to the SAM root) -> ``SamModel`` state dict."""
    converted = {rename_sam_key(k): v for k, v in state_dict.items()}
    shared = converted.get("shared_image_embedding.positional_embedding")
    if shared is not None:
        converted[TIED_POSITIONAL_COPY] = shared
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
