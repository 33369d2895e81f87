"""Configuration of a reasoning-segmentation model: the single source of truth for its hyper-parameters.

A model is one composition (vision tower -> projector -> causal LM, and SAM -> mask decoder, joined by the
``[SEG]`` projection). Each part has its own sub-config; each family convention (LISA, Sa2VA, ...) is a named field.
"""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, SamConfig
from transformers.configuration_utils import SubConfigSpec

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")


@strict
class ReasonSegConfig(PreTrainedConfig):
    r"""
    vision_config: config of the vision tower (any ``AutoModel`` vision model; CLIP by default, SigLIP works too).
    text_config: config of the causal language model (anything ``AutoModelForCausalLM`` builds; LLaMA by default).
    sam_config: ``transformers.SamConfig`` of the SAM image encoder, prompt encoder and mask decoder.
    projector_type: ``"linear"`` (LLaVA v1 / LISA) or ``"mlp2x_gelu"`` (LLaVA 1.5).
    vision_feature_layer: which hidden state of the vision tower feeds the projector (LLaVA: -2).
    vision_feature_select_strategy: ``"patch"`` drops the CLS token (CLIP, LLaVA), ``"cls_patch"`` keeps it; ``"full"``
        keeps every token (towers without a CLS token, such as SigLIP).
    image_token_index: the placeholder id the processor puts where the image features go (never a vocabulary id).
    seg_token_id: vocabulary id of ``[SEG]``.
    seg_hidden_position: ``"before"``: the state of the token before each ``[SEG]`` (the one whose logits predict
        it; LISA) or ``"at"``: the state at the ``[SEG]`` position (Sa2VA).
    mask_selection: ``"first"``: single-mask output (``multimask_output=False``; LISA) or ``"best_iou"``: three
        candidate masks, keep the one with the highest predicted IoU (Sa2VA).
    ce_loss_weight, bce_loss_weight, dice_loss_weight: training loss weights (LISA: 1.0, 2.0, 0.5).
    seg_point_loss_weight: weight of an auxiliary loss LISA does not have (0: off): the mean squared distance of each
        [SEG] prompt to SAM's prompt token for a positive point at the innermost pixel of its target mask. It gives a
        mask decoder that was pre-trained with point prompts a direct signal of where the target is.
    image_attention: ``"causal"`` (LLaVA, LISA) or ``"bidirectional"``: the image tokens see each other both ways
        (modeling/image_attention.py); a model must run as it was trained.
    """

    model_type = "reasonseg"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "sam_config": SubConfigSpec(config_class=SamConfig),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
    projector_type: str = "linear"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["patch", "cls_patch", "full"] = "patch"
    image_token_index: int = -200
    seg_token_id: int | None = None
    seg_hidden_position: Literal["before", "at"] = "before"
    mask_selection: Literal["first", "best_iou"] = "first"
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    seg_point_loss_weight: float = 0.0
    image_attention: Literal["causal", "bidirectional"] = "causal"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}")

    @property
    def seg_embedding_dim(self) -> int:
        """Width of a ``[SEG]`` prompt embedding: the SAM prompt width."""
        return self.sam_config.prompt_encoder_config.hidden_size

    def get_text_config(self, *args, **kwargs):
        return self.text_config


AutoConfig.register(ReasonSegConfig.model_type, ReasonSegConfig, exist_ok=True)
