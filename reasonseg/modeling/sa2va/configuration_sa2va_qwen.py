"""Configuration of a Sa2VA model of the Qwen-VL family (``Sa2VAChatModelQwen``: Sa2VA-Qwen2_5-VL-3B/7B) as
reasonseg runs it: transformers' whole Qwen-VL model (vision tower with its patch merger, M-RoPE language model,
``lm_head``) and SAM2, joined by the ``[SEG]`` projection (Sa2VA's ``text_hidden_fcs``)."""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, Sam2Config
from transformers.configuration_utils import SubConfigSpec

# Qwen-VL families reasonseg builds (the ``model_type`` of ``vlm_config``); Qwen3-VL's deepstack features (added to
# the image positions after its first decoder layers) travel with the spliced prompt
SUPPORTED_VLM_TYPES = ("qwen2_5_vl", "qwen3_vl")


@strict
class Sa2VAQwenConfig(PreTrainedConfig):
    r"""
    vlm_config: the Qwen-VL config (``Qwen2_5_VLConfig`` or ``Qwen3VLConfig``: ``vision_config``, ``text_config``,
        ``image_token_id`` ...).
    sam_config: ``transformers.Sam2Config`` (SAM2-Hiera-L in Sa2VA).
    image_token_index: the placeholder id the processor puts where the image's merged patch features go (never a
        vocabulary id; the model spells it out as the VLM's ``image_token_id`` only to compute M-RoPE positions).
    seg_token_id: vocabulary id of ``[SEG]``.
    seg_hidden_position: ``"at"`` (Sa2VA: the state at the ``[SEG]`` position) or ``"before"`` (LISA).
    mask_selection: ``"best_iou"`` (Sa2VA: three candidates, highest predicted IoU) or ``"first"``.
    template: chat template name (``qwen_chat``).
    """

    model_type = "reasonseg_sa2va_qwen"
    sub_configs_defaults = {
        "vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl"),
        "sam_config": SubConfigSpec(config_class=Sam2Config),
    }

    vlm_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
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
    def text_config(self):
        return self.vlm_config.text_config

    def get_text_config(self, *args, **kwargs):
        return self.vlm_config.text_config


AutoConfig.register(Sa2VAQwenConfig.model_type, Sa2VAQwenConfig, exist_ok=True)
