"""Configuration of a Sa2VA model (InternVL family) as reasonseg runs it: InternViT -> pixel shuffle + MLP ->
causal LM, and SAM2, joined by the ``[SEG]`` projection (Sa2VA's ``text_hidden_fcs``)."""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, Sam2Config
from transformers.configuration_utils import SubConfigSpec


@strict
class Sa2VAConfig(PreTrainedConfig):
    r"""
    vision_config: ``InternVLVisionConfig`` of the InternViT tower (transformers' InternVL vision model).
    text_config: config of the causal language model (Qwen2 / Qwen2.5, Phi-3, LLaMA; InternLM2 mapped onto LLaMA).
    sam_config: ``transformers.Sam2Config`` (image encoder, prompt encoder, mask decoder; SAM2-Hiera-L in Sa2VA).
    downsample_ratio: pixel-shuffle factor (0.5: a 32x32 patch grid becomes 16x16 tokens of 4x the width).
    ps_version: ``"v2"`` swaps height and width back after the shuffle; ``"v1"`` leaves them transposed.
    vision_feature_layer: which InternViT hidden state feeds the projector (-1: the last layer, no final norm).
    image_token_index: the placeholder id the processor puts where the tile features go (never a vocabulary id).
    seg_token_id: vocabulary id of ``[SEG]``.
    seg_hidden_position: ``"at"`` (Sa2VA: the state at the ``[SEG]`` position) or ``"before"`` (LISA).
    mask_selection: ``"best_iou"`` (Sa2VA: three candidates, highest predicted IoU) or ``"first"``.
    template: Sa2VA's chat template name (``qwen_chat``, ``internlm2_chat``, ``phi3_chat``).
    """

    model_type = "reasonseg_sa2va"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="internvl_vision"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "sam_config": SubConfigSpec(config_class=Sam2Config),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
    downsample_ratio: float = 0.5
    ps_version: Literal["v1", "v2"] = "v2"
    vision_feature_layer: int = -1
    image_token_index: int = -200
    seg_token_id: int | None = None
    seg_hidden_position: Literal["before", "at"] = "at"
    mask_selection: Literal["first", "best_iou"] = "best_iou"
    template: str = "qwen_chat"
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5

    @property
    def seg_embedding_dim(self) -> int:
        """Width of a ``[SEG]`` prompt embedding: SAM2's prompt width."""
        return self.sam_config.prompt_encoder_config.hidden_size

    @property
    def tokens_per_tile(self) -> int:
        size = self.vision_config.image_size
        patch = self.vision_config.patch_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        return int((size // patch) ** 2 * self.downsample_ratio**2)

    def get_text_config(self, *args, **kwargs):
        return self.text_config


AutoConfig.register(Sa2VAConfig.model_type, Sa2VAConfig, exist_ok=True)
