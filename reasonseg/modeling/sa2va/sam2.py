"""The mask side of Sa2VA on transformers' ``Sam2Model``: image features once per image, then every [SEG] of that
image decoded in one mask-decoder call.

Sa2VA decodes each [SEG] through SAM2's video predictor with a single frame. For one frame that path reduces to:
backbone features, ``conv_s0``/``conv_s1`` on the two high-resolution levels, ``no_mem_embed`` added to the 64x64
level, and the mask decoder prompted with two "not a point" tokens plus the language embedding (no mask prompt,
three candidate masks, the best by predicted IoU). This module does exactly that, without the video machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Sam2Model

from ..placement import execution_device, parameter_dtype


@dataclass
class Sam2ImageFeatures:
    """SAM2 features of a batch of images: ``image_embeddings [B, C, 64, 64]`` (with ``no_mem_embed``) and the
    projected high-resolution levels ``[B, C/8, 256, 256]`` and ``[B, C/4, 128, 128]``."""

    image_embeddings: torch.Tensor
    high_res_s0: torch.Tensor
    high_res_s1: torch.Tensor

    def __getitem__(self, index) -> "Sam2ImageFeatures":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Sam2ImageFeatures(self.image_embeddings[index], self.high_res_s0[index], self.high_res_s1[index])

    def __len__(self) -> int:
        return self.image_embeddings.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.image_embeddings.shape

    def to(self, *args, **kwargs) -> "Sam2ImageFeatures":
        return Sam2ImageFeatures(*(t.to(*args, **kwargs) for t in (self.image_embeddings, self.high_res_s0, self.high_res_s1)))


def sam2_image_features(sam: Sam2Model, pixel_values: torch.Tensor) -> Sam2ImageFeatures:
    """``[B, 3, 1024, 1024]`` normalised SAM2 input -> :class:`Sam2ImageFeatures` (with gradients)."""
    encoder = sam.vision_encoder
    pixel_values = pixel_values.to(execution_device(encoder), parameter_dtype(encoder))
    levels = encoder(pixel_values).fpn_hidden_states  # high to low resolution
    decoder = sam.mask_decoder
    conv_dtype = parameter_dtype(decoder.conv_s0)
    device = execution_device(decoder)
    s0 = decoder.conv_s0(levels[0].to(device, conv_dtype))
    s1 = decoder.conv_s1(levels[1].to(device, conv_dtype))
    no_memory = sam.no_memory_embedding
    embeddings = levels[-1] + no_memory.to(levels[-1].device, levels[-1].dtype).reshape(1, -1, 1, 1)
    return Sam2ImageFeatures(embeddings, s0, s1)


def sam2_image_positional_embeddings(sam: Sam2Model, size: int) -> torch.Tensor:
    """SAM2's dense positional encoding of the ``size x size`` embedding grid: ``[1, C, size, size]``."""
    device = execution_device(sam.shared_image_embedding)
    steps = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    grid_y, grid_x = torch.meshgrid(steps, steps, indexing="ij")
    encoded = sam.shared_image_embedding(torch.stack([grid_x, grid_y], dim=-1)[None])[0]
    return encoded.permute(2, 0, 1).unsqueeze(0)


def language_sparse_prompts(sam: Sam2Model, prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """``[n, C]`` language embeddings -> ``[n, 3, C]`` sparse prompts: SAM2's empty point prompt (one point of label
    -1, padded with another) embeds as two ``not_a_point`` tokens; the language embedding follows them."""
    decoder = sam.mask_decoder
    dtype, device = decoder.iou_token.weight.dtype, execution_device(decoder)
    count, channels = prompt_embeddings.shape
    embed = sam.prompt_encoder.not_a_point_embed
    index = torch.zeros(1, dtype=torch.long, device=execution_device(embed))
    not_a_point = embed(index).to(device, dtype)  # [1, C]
    return torch.cat([not_a_point.expand(count, 2, channels), prompt_embeddings.to(device, dtype)[:, None]], dim=1)


def run_sam2_decoder(
    sam: Sam2Model, features: Sam2ImageFeatures, prompt_embeddings: torch.Tensor, multimask_output: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mask decoder for ``n`` language embeddings of one image, on the point-batch axis, in one call.

    Returns low-res mask logits ``[n, k, 256, 256]`` (k = 3 candidates, or 1), predicted IoU ``[n, k]``, object
    score logits ``[n, 1]`` (computed, not applied: Sa2VA does not blank masks by it) and the sparse prompts."""
    decoder = sam.mask_decoder
    dtype, device = decoder.iou_token.weight.dtype, execution_device(decoder)
    sparse = language_sparse_prompts(sam, prompt_embeddings)
    image_embeddings = features.image_embeddings.to(device, dtype)
    _, _, height, width = image_embeddings.shape
    embed = sam.prompt_encoder.no_mask_embed
    no_mask = embed(torch.zeros(1, dtype=torch.long, device=execution_device(embed)))
    dense = no_mask.to(device, dtype).reshape(1, -1, 1, 1).expand(1, -1, height, width)
    positions = sam2_image_positional_embeddings(sam, height).to(device, dtype)
    masks, iou, _, object_scores = decoder(
        image_embeddings=image_embeddings,
        image_positional_embeddings=positions,
        sparse_prompt_embeddings=sparse.unsqueeze(0),
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
        high_resolution_features=[features.high_res_s0.to(device, dtype), features.high_res_s1.to(device, dtype)],
    )
    return masks[0], iou[0], object_scores[0], sparse


def decode_sam2_masks(
    sam: Sam2Model, features: Sam2ImageFeatures, prompt_embeddings: torch.Tensor, mask_selection: str = "best_iou"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One low-resolution mask per language embedding, all for the same image, in one decoder call.

    Returns low-res logits ``[n, 256, 256]`` and the predicted IoU ``[n]``. ``"best_iou"``: of three candidates,
    the highest predicted IoU (Sa2VA); ``"first"``: SAM2's single-mask output."""
    multimask = mask_selection == "best_iou"
    masks, iou, _, _ = run_sam2_decoder(sam, features, prompt_embeddings, multimask)
    if multimask:
        best = iou.argmax(dim=-1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        return masks[rows, best], iou[rows, best]
    return masks[:, 0], iou[:, 0]


class Sam2MaskSide:
    """What every Sa2VA model class (InternVL and Qwen-VL families) says about its SAM2 side and its [SEG] states:
    mixed into a model with ``sam`` (``Sam2Model``) and ``config`` (``seg_token_id``, ``seg_hidden_position``,
    ``mask_selection``, ``sam_config``); these are :class:`~reasonseg.modeling.segmentation_pass.SegmentationPass`'s
    hooks."""

    def encode_sam_images(self, sam_pixel_values: torch.Tensor) -> Sam2ImageFeatures:
        """SAM2 pixels ``[B, 3, 1024, 1024]`` -> :class:`Sam2ImageFeatures` (sliceable per image)."""
        return sam2_image_features(self.sam, sam_pixel_values)

    def sam_embeddings_per_image(self, embeddings) -> list:
        return [embeddings[i] for i in range(len(embeddings))]

    def decode_prompt_masks(self, image_embedding: Sam2ImageFeatures, prompts: torch.Tensor):
        return decode_sam2_masks(self.sam, image_embedding, prompts, self.config.mask_selection)

    @property
    def sam_input_size(self) -> int:
        """SAM2's 1024x1024 input: the squashed image, so ``resized_size`` is all of it and nothing is cropped."""
        return self.config.sam_config.prompt_encoder_config.image_size

    def seg_token_locations(self, input_ids: torch.Tensor, spliced) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, expanded positions) of the hidden states feeding each [SEG]: at the [SEG] (Sa2VA) or before it."""
        rows, cols = torch.nonzero(input_ids == self.config.seg_token_id, as_tuple=True)
        positions = spliced.token_positions[rows, cols.to(spliced.token_positions.device)]
        if self.config.seg_hidden_position == "before":
            positions = positions - 1
        return rows, positions
