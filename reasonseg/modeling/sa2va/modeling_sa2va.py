"""Sa2VA (InternVL family) as a reasonseg model: the same interface as :class:`ReasonSegForCausalLM`, so
``Segmenter``, chat sessions, the CLI and the server run it unchanged.

    image -> 448px tiles -> InternViT -> pixel shuffle -> mlp1 --+
                                                                  +-> splice -> causal LM -> tokens
    prompt -> tokens ---------------------------------------------+                 |
    image -> 1024x1024 -> SAM2 image encoder -> features          hidden state at each [SEG] -> text_hidden_fcs
                                     +----------------------> SAM2 mask decoder <--------------+ -> mask logits

Why its own class rather than kinds inside ``ReasonSegForCausalLM``: every part differs in kind (InternViT with
tiling instead of one CLIP crop, pixel shuffle + LayerNorm MLP instead of a LLaVA projector, SAM2 with
high-resolution features instead of SAM) and a Sa2VA image is several tiles, so only the language model, the
splice, the [SEG] projection and the losses are shared; those are shared as functions and modules.
"""


import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel, Sam2Model

from ..modeling_reasonseg import ReasonSegOutput
from ..placement import execution_device, parameter_dtype
from ..seg_projection import SegProjection
from .configuration_sa2va import Sa2VAConfig
from .sam2 import Sam2ImageFeatures, Sam2MaskSide
from ..language_delegation import LanguageModelDelegation
from ..segmentation_pass import SegmentationPass


def pixel_shuffle(features: torch.Tensor, scale: float, version: str = "v2") -> torch.Tensor:
    """InternVL's pixel shuffle: ``[N, W, H, C]`` -> ``[N, W*s, H*s, C/s^2]`` (``s`` = ``scale`` < 1).

    ``v2`` swaps the two spatial axes back after the shuffle; ``v1`` leaves them swapped, as the first InternVL
    models were trained."""
    n, w, h, c = features.shape
    x = features.reshape(n, w, int(h * scale), int(c / scale))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    if version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


def build_mlp1(vision_hidden_size: int, text_hidden_size: int, downsample_ratio: float) -> nn.Sequential:
    """Sa2VA's ``mlp1``: LayerNorm -> Linear -> GELU -> Linear (submodules 0, 1, 3 as in its checkpoints)."""
    width = vision_hidden_size * int(1 / downsample_ratio) ** 2
    return nn.Sequential(
        nn.LayerNorm(width), nn.Linear(width, text_hidden_size), nn.GELU(), nn.Linear(text_hidden_size, text_hidden_size)
    )


class Sa2VAPreTrainedModel(PreTrainedModel):
    config: Sa2VAConfig
    base_model_prefix = "sa2va"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = [
        "InternVLVisionLayer", "Qwen2DecoderLayer", "LlamaDecoderLayer", "Phi3DecoderLayer", "Qwen3DecoderLayer",
        "Sam2VisionModel", "Sam2MaskDecoder", "Sam2PromptEncoder", "SegProjection",
    ]
    input_modalities = ("image", "text")


class Sa2VAForCausalLM(LanguageModelDelegation, Sam2MaskSide, SegmentationPass, Sa2VAPreTrainedModel):
    """Attribute names follow ``ReasonSegForCausalLM`` (``vision_tower``, ``multi_modal_projector``,
    ``language_model``, ``sam``, ``seg_projection``) so precision, quantisation and placement rules apply alike."""

    def __init__(self, config: Sa2VAConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_mlp1(
            config.vision_config.hidden_size, config.text_config.hidden_size, config.downsample_ratio
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.sam = Sam2Model(config.sam_config)
        self.seg_projection = SegProjection(config.text_config.hidden_size, config.seg_embedding_dim)
        self.post_init()

    # ---- the two image branches ----
    def encode_tiles(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles ``[T, 3, 448, 448]`` -> token features ``[T, 256, hidden]`` (Sa2VA's ``extract_feature``)."""
        tower = self.vision_tower
        pixels = pixel_values.to(execution_device(tower), parameter_dtype(tower))
        layer = self.config.vision_feature_layer
        if layer == -1:
            features = tower(pixels).last_hidden_state
        else:
            features = tower(pixels, output_hidden_states=True).hidden_states[layer]
        features = features[:, 1:]
        side = int(features.shape[1] ** 0.5)
        features = features.reshape(features.shape[0], side, side, -1)
        features = pixel_shuffle(features, self.config.downsample_ratio, self.config.ps_version)
        features = features.reshape(features.shape[0], -1, features.shape[-1])
        projector = self.multi_modal_projector
        return projector(features.to(execution_device(projector), parameter_dtype(projector)))

    def encode_images(self, pixel_values, tile_counts: list[int] | None = None):
        """Images' tiles -> per-image token features (what the splice puts in place of each image placeholder).

        ``[B, T, 3, 448, 448]`` (B images of T tiles each, as the processor's ``pixel_values`` ``[1, T, ...]``
        concatenate) -> ``[B, T*256, hidden]``; ``[T, 3, 448, 448]`` -> ``[1, T*256, hidden]`` (one image); a list
        of per-image tile tensors, or concatenated tiles with ``tile_counts``, -> a list of ``[T_i*256, hidden]``."""
        if isinstance(pixel_values, (list, tuple)):
            tile_counts = [p.reshape(-1, *p.shape[-3:]).shape[0] for p in pixel_values]
            pixel_values = torch.cat([p.reshape(-1, *p.shape[-3:]) for p in pixel_values])
        if tile_counts is not None:
            features = self.encode_tiles(pixel_values)
            return [chunk.reshape(-1, features.shape[-1]) for chunk in torch.split(features, list(tile_counts))]
        images = pixel_values.shape[0] if pixel_values.dim() == 5 else 1
        features = self.encode_tiles(pixel_values.reshape(-1, *pixel_values.shape[-3:]))
        return features.reshape(images, -1, features.shape[-1])

    # ---- the full forward (training, teacher-forced checks) ----
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        image_indices: list[int] | None = None,
        resized_sizes: list[tuple[int, int]] | None = None,
        original_sizes: list[tuple[int, int]] | None = None,
        labels: torch.Tensor | None = None,
        gt_masks: list[torch.Tensor] | None = None,
        image_features=None,
        sam_image_embeddings: Sam2ImageFeatures | None = None,
        return_logits: bool = True,
        tile_counts: list[int] | None = None,
    ) -> ReasonSegOutput:
        """One pass over a batch of conversations (as :meth:`ReasonSegForCausalLM.forward`).

        pixel_values: per image its tiles: ``[num_images, T, 3, 448, 448]``, a list of ``[T_i, 3, 448, 448]``, or
        all tiles concatenated with ``tile_counts``; sam_pixel_values ``[num_images, 3, 1024, 1024]``."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values, tile_counts)
        return self.segmentation_pass(input_ids, attention_mask, image_features, image_indices, sam_pixel_values,
                                      sam_image_embeddings, resized_sizes, original_sizes, labels, gt_masks,
                                      return_logits)


AutoModel.register(Sa2VAConfig, Sa2VAForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(Sa2VAConfig, Sa2VAForCausalLM, exist_ok=True)
