"""What trains: LoRA on the language model; the [SEG] projection, SAM's mask decoder and the new tokens' rows.

Frozen: the vision tower, the projector, SAM's image and prompt encoders, and every embedding / lm_head row
except those of tokens added for segmentation (``[SEG]`` and image start/end), whose gradients are masked.

The same rule serves a Sa2VA model (``Sa2VAForCausalLM`` has the same attribute names): LoRA on its LLM,
``text_hidden_fcs`` (``seg_projection``) and SAM2's mask decoder (with its ``conv_s0``/``conv_s1``) train, and
InternViT, ``mlp1``, SAM2's image and prompt encoders stay frozen; only the ``[SEG]`` row of its vocabulary trains.
A Qwen-VL Sa2VA (``Sa2VAQwenForCausalLM``) likewise: LoRA only under ``vlm.model.language_model`` (its vision
blocks have ``gate_proj``/``up_proj``/``down_proj`` too and stay frozen, as do the patch merger and SAM2's encoders).
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, get_peft_model

from ..errors import InputError
from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
from .config import TrainingConfig

TRAINABLE_TOKENS = ("[SEG]", "<im_start>", "<im_end>")


def language_lora_pattern(target_modules: list[str], language_path: str = "language_model") -> str:
    """A regex (peft full-matches it against module names) that wraps the named projections inside the language
    model at ``language_path`` only: a bare name would also wrap the vision tower's (CLIP's ``q_proj``, the Qwen-VL
    vision blocks' ``gate_proj``/``up_proj``/``down_proj``)."""
    return rf"{re.escape(language_path)}\.(?:.*\.)?({'|'.join(map(re.escape, target_modules))})"


def language_model_path(model) -> str:
    """The module path of the model's language model (the module its ``decoder`` property returns):
    ``language_model.model`` for LISA and the InternVL-family Sa2VA, ``vlm.model.language_model`` for the Qwen-VL
    family."""
    decoder = model.decoder
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise InputError(f"{type(model).__name__}'s language model is not one of its modules; cannot place LoRA")


def check_quantized_training(config: TrainingConfig, device: str) -> None:
    """QLoRA needs bitsandbytes' CUDA kernels: refuse it elsewhere with what to do instead."""
    if not (config.load_in_4bit or config.load_in_8bit):
        return
    flag = "load_in_4bit" if config.load_in_4bit else "load_in_8bit"
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise InputError(
            f"{flag} (QLoRA) trains only on a CUDA GPU, and this run is on {device}; set {flag}=false "
            "(precision=bf16 halves memory without it)"
        )
    if config.precision == "fp16":
        raise InputError(f"{flag} with precision=fp16 is not supported; use precision=bf16 or fp32")


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_for_training(model: ReasonSegForCausalLM, config: TrainingConfig, trainable_token_ids: list[int]):
    """Freeze, add LoRA, unfreeze the trained parts; returns the peft-wrapped model.

    A 4/8-bit base (QLoRA) is first readied by peft's ``prepare_model_for_kbit_training`` (the non-quantised
    parts in fp32); gradient checkpointing stays the config's, on the language model only, as without QLoRA.
    """
    if is_quantized(model):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=language_lora_pattern(config.lora.target_modules, language_model_path(model)),
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    base = peft_model.get_base_model()
    for parameter in base.seg_projection.parameters():
        parameter.requires_grad_(True)
    if config.train_mask_decoder:
        for parameter in base.sam.mask_decoder.parameters():
            parameter.requires_grad_(True)
    if config.train_sam_encoder:
        for parameter in base.sam.vision_encoder.parameters():
            parameter.requires_grad_(True)
    for matrix in (base.get_input_embeddings().weight, base.get_output_embeddings().weight):
        train_rows_only(matrix, trainable_token_ids)
    base.config.ce_loss_weight = config.ce_loss_weight
    base.config.bce_loss_weight = config.bce_loss_weight
    base.config.dice_loss_weight = config.dice_loss_weight
    if hasattr(base, "seg_point_loss"):  # set even to 0: a model exported from a run with it on keeps its weight
        base.config.seg_point_loss_weight = config.seg_point_loss_weight
    elif config.seg_point_loss_weight:
        raise InputError(f"seg_point_loss_weight applies to SAM-based (LISA-style) models only, not "
                         f"{type(base).__name__}: set it to 0")
    if config.gradient_checkpointing:
        # the causal LM where the model keeps one (LISA, InternVL-family Sa2VA), else its decoder (Qwen-VL Sa2VA)
        set_activation_checkpointing(getattr(base, "language_model", None) or base.decoder, True)
    return peft_model


def set_activation_checkpointing(module, enabled: bool) -> None:
    """Switch a transformers model's layer checkpointing (non-reentrant) on or off, under the name the installed
    transformers has (``activation_checkpointing_*``; ``gradient_checkpointing_*`` before it was renamed)."""
    if enabled:
        if hasattr(module, "activation_checkpointing_enable"):
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(module, "activation_checkpointing_disable"):
        module.activation_checkpointing_disable()
    else:
        module.gradient_checkpointing_disable()


def train_rows_only(weight: torch.nn.Parameter, rows: list[int]) -> None:
    """Let only ``rows`` of an embedding-like matrix learn (their gradient kept, the rest zeroed).

    The hook is on the tensor, so it runs before the gradient is accumulated into ``.grad`` and before DDP's
    all-reduce sees it: processes average masked gradients, and the rows stay exactly frozen under any launch
    (tests/test_training_distributed.py checks both). Weight decay is 0 by default; a nonzero one would also
    shrink the frozen rows, as in LISA.
    """
    if not rows:
        return
    weight.requires_grad_(True)
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[rows] = 1
    weight.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))


def trainable_token_ids(processor) -> list[int]:
    vocab = processor.tokenizer.get_vocab()
    return [vocab[token] for token in TRAINABLE_TOKENS if token in vocab]
