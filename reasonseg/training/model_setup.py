"""What trains: LoRA on the language model; the [SEG] projection, SAM's mask decoder and the new tokens' rows.

Frozen: the vision tower, the projector, SAM's image and prompt encoders, and every embedding / lm_head row
except those of tokens added for segmentation (``[SEG]`` and image start/end), whose gradients are masked.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
from .config import TrainingConfig

TRAINABLE_TOKENS = ("[SEG]", "<im_start>", "<im_end>")


def language_lora_pattern(target_modules: list[str]) -> str:
    """A regex that wraps the language model's projections only (a bare name would also wrap CLIP's)."""
    return rf".*language_model.*\.({'|'.join(target_modules)})"


def prepare_for_training(model: ReasonSegForCausalLM, config: TrainingConfig, trainable_token_ids: list[int]):
    """Freeze, add LoRA, unfreeze the trained parts; returns the peft-wrapped model."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=language_lora_pattern(config.lora.target_modules),
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    base = peft_model.get_base_model()
    for parameter in base.seg_projection.parameters():
        parameter.requires_grad_(True)
    if config.train_mask_decoder:
        for parameter in base.sam.mask_decoder.parameters():
            parameter.requires_grad_(True)
    for matrix in (base.get_input_embeddings().weight, base.get_output_embeddings().weight):
        train_rows_only(matrix, trainable_token_ids)
    base.config.ce_loss_weight = config.ce_loss_weight
    base.config.bce_loss_weight = config.bce_loss_weight
    base.config.dice_loss_weight = config.dice_loss_weight
    if config.gradient_checkpointing:
        base.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return peft_model


def train_rows_only(weight: torch.nn.Parameter, rows: list[int]) -> None:
    """Let only ``rows`` of an embedding-like matrix learn (their gradient kept, the rest zeroed)."""
    if not rows:
        return
    weight.requires_grad_(True)
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[rows] = 1
    weight.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))


def trainable_token_ids(processor) -> list[int]:
    vocab = processor.tokenizer.get_vocab()
    return [vocab[token] for token in TRAINABLE_TOKENS if token in vocab]
