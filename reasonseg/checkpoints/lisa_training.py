"""LISA training outputs -> a merged, self-contained reasonseg checkpoint, in one command and without a GPU.

    reasonseg convert --from-lisa-weights runs/lisa-7b/pytorch_model.bin --vlm liuhaotian/LLaVA-Lightning-7B-v1-1 \\
        --out lisa-7b-mine [--lora-r 8 --lora-alpha 16 --lora-targets q_proj,v_proj]

``pytorch_model.bin`` is what DeepSpeed's ``zero_to_fp32.py`` writes from LISA's ``ckpt_model``: the whole
``LISAForCausalLM`` inside peft's wrapper, LoRA unmerged. Its keys: ``base_model.model.`` + LISA's names
(``model.layers.N.self_attn.q_proj.weight`` with ``...q_proj.lora_A[.default].weight`` / ``lora_B`` beside it;
newer peft puts the frozen weight at ``...q_proj.base_layer.weight``), SAM under ``model.visual_model.``, the CLIP
tower under ``model.vision_tower.vision_tower.``, the ``[SEG]`` projection at ``model.text_hidden_fcs.0``.

LoRA is merged as peft does: ``W + (B @ A) * alpha / r`` (r read from the tensors, alpha given). ``SRC`` is the
``--version`` the training started from: it supplies the tokenizer (to which ``[SEG]``, ``<im_start>`` and
``<im_end>`` are added in LISA's order), the language-model config and the name of the CLIP tower (whose config and
image processor are read; its weights come from the state dict like every other weight). The file is read with
``torch.load(weights_only=True)``; a missing or unexpected tensor is reported by name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError, UnsupportedError

PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
# LISA's find_linear_layers: LoRA goes on the language model's linear layers only
LISA_LORA_EXCLUDED = ("visual_model", "vision_tower", "mm_projector", "text_hidden_fcs")
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")


def read_training_state_dict(weights: str | Path) -> dict[str, torch.Tensor]:
    """A ``zero_to_fp32.py`` output: one ``.bin``/``.pth``/``.safetensors`` file, or a directory of shards."""
    from .state_dicts import iter_checkpoint_tensors, load_tensor_file

    path = Path(weights).expanduser()
    if path.is_dir():
        return dict(iter_checkpoint_tensors(path))
    if not path.is_file():
        raise InputError(f"--from-lisa-weights {path} not found (the pytorch_model.bin that zero_to_fp32.py wrote)")
    return load_tensor_file(path)


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DeepSpeed's ``module.`` and peft's ``base_model.model.`` prefixes (either may be absent)."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", PEFT_PREFIX):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def merge_lora_state_dict(
    state: dict[str, torch.Tensor],
    lora_alpha: float,
    lora_r: int | None = None,
    targets: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS,
) -> dict[str, torch.Tensor]:
    """LISA names (peft prefix already stripped) with every LoRA pair merged into its base weight (peft's rule).

    Checks, each failing with the tensor's name: one adapter only; A and B of every pair present and of matching
    rank (equal to ``lora_r`` when given); LoRA only on ``targets`` of the language model; every language-model
    linear named in ``targets`` carries LoRA.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    adapters = set()
    for key, value in state.items():
        match = LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["which"]] = value
            adapters.add(match["adapter"])
        else:
            plain[key] = value
    if len(adapters) > 1:
        raise CheckpointError(f"the state dict holds several LoRA adapters ({', '.join(map(str, sorted(map(str, adapters))))}); keep one")
    targets = tuple(targets)
    merged = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise CheckpointError(f"{module}: has one LoRA matrix but not its {missing}")
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in targets or any(part in module for part in LISA_LORA_EXCLUDED):
            raise CheckpointError(
                f"unexpected LoRA on {module} (--lora-targets {','.join(targets)}); pass the targets the run used"
            )
        lora_a, lora_b = pair["A"], pair["B"]
        rank = lora_a.shape[0]
        if lora_b.shape[1] != rank:
            raise CheckpointError(f"{module}: lora_A has rank {rank} but lora_B {lora_b.shape[1]}")
        if lora_r is not None and rank != lora_r:
            raise CheckpointError(f"{module}: LoRA rank in the state dict is {rank}, not --lora-r {lora_r}")
        weight_key = f"{module}.base_layer.weight" if f"{module}.base_layer.weight" in plain else f"{module}.weight"
        if weight_key not in plain:
            raise CheckpointError(f"missing tensor {module}.weight (the base weight under LoRA on {module})")
        weight = plain.pop(weight_key)
        if weight.shape != (lora_b.shape[0], lora_a.shape[1]):
            raise CheckpointError(
                f"{module}: LoRA {tuple(lora_b.shape)} x {tuple(lora_a.shape)} does not fit the weight {tuple(weight.shape)}"
            )
        delta = (lora_b.float() @ lora_a.float()) * (lora_alpha / rank)
        merged[f"{module}.weight"] = (weight.float() + delta).to(weight.dtype)
        bias_key = f"{module}.base_layer.bias"
        if bias_key in plain:
            merged[f"{module}.bias"] = plain.pop(bias_key)
    for key in plain:
        leaf = key.rsplit(".", 2)
        if (
            len(leaf) == 3
            and leaf[2] == "weight"
            and leaf[1] in targets
            and key.startswith("model.layers.")
            and key[: -len(".weight")] not in pairs
        ):
            raise CheckpointError(f"missing LoRA on {key[: -len('.weight')]} (lora_A/lora_B); is --lora-targets right?")
    plain.update(merged)
    return plain


def convert_lisa_training_weights(
    weights: str | Path,
    vlm: str | Path,
    out: str | Path,
    *,
    lora_r: int | None = 8,
    lora_alpha: float = 16,
    lora_targets: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS,
    vision_tower: str | None = None,
    conv_type: str | None = None,
    precision: str = "bf16",
    use_im_start_end: bool = True,
) -> Path:
    """``reasonseg convert --from-lisa-weights``: merge, rename, and save a native reasonseg checkpoint at ``out``.

    precision: the saved dtype: fp32/bf16/fp16, or ``auto`` for the state dict's (``zero_to_fp32.py`` writes fp32;
    LISA's merge script saves bf16, the default here).
    use_im_start_end: LISA's ``--use_mm_start_end`` (on by default in its training).
    """
    from ..modeling.configuration_reasonseg import ReasonSegConfig
    from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
    from ..processing.conversation import IMAGE_END_TOKEN, IMAGE_START_TOKEN, get_template
    from ..processing.processing_reasonseg import ProcessorSettings, ReasonSegProcessor
    from ..processing.tokenization import add_seg_token, add_tokens
    from .build import (
        BUILD_INFO_NAME,
        _load_tokenizer,
        guess_conv_type,
        load_vision_tower,
        materialize_position_ids,
        resolve_dtype,
        sam_config_from_tensors,
        tokenizer_style_for,
    )
    from .convert import save_native
    from .lisa import SAM_PREFIX, lisa_key_to_native, resolve_vision_tower, text_config_from_lisa
    from .loading import locate_checkpoint, read_config
    from .materialize import assign_state_dict, build_on_meta
    from .sam_keys import convert_sam_state_dict

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose a new --out directory")
    if conv_type is not None:
        get_template(conv_type)
    dtype = None if precision == "auto" else resolve_dtype(precision, {})
    source = locate_checkpoint(vlm)
    source_config = read_config(source)
    if "vision_config" in source_config and "text_config" in source_config:
        raise UnsupportedError(
            f"--vlm {vlm} is a transformers-format model; LISA's training starts from an original LLaVA (or LISA) "
            "checkpoint: pass the --version the run used"
        )
    tower_name = vision_tower or source_config.get("mm_vision_tower") or source_config.get("vision_tower")
    if not tower_name:
        raise CheckpointError(f"{source}/config.json names no mm_vision_tower; pass --vision-tower PATH_OR_ID")

    state = merge_lora_state_dict(
        strip_wrappers(read_training_state_dict(weights)), lora_alpha, lora_r, tuple(lora_targets)
    )
    sam_state, tower_state, native = {}, {}, {}
    for key, tensor in state.items():
        if key.startswith(SAM_PREFIX):
            sam_state[key[len(SAM_PREFIX) :]] = tensor
        elif key.startswith("model.vision_tower."):
            inner = re.sub(r"^model\.vision_tower\.(vision_tower\.)?(vision_model\.)?", "", key)
            if not inner.endswith("position_ids"):
                tower_state[f"vision_tower.{inner}"] = tensor
        else:
            mapped = lisa_key_to_native(key)
            if mapped is not None:
                native[mapped] = tensor
    del state
    if "image_encoder.patch_embed.proj.weight" not in sam_state:
        raise CheckpointError(
            f"{weights} holds no SAM weights (model.visual_model.image_encoder.*); is it a LISA training state dict?"
        )
    embed = native.get("language_model.model.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"{weights} is missing model.embed_tokens.weight; is it a LISA training state dict?")
    dtype = dtype or embed.dtype

    style = tokenizer_style_for(source, "llama")
    tokenizer = _load_tokenizer(source, style)
    seg_id = add_seg_token(tokenizer)
    added = {"[SEG]": seg_id}
    if use_im_start_end:
        start_id, end_id = add_tokens(tokenizer, [IMAGE_START_TOKEN, IMAGE_END_TOKEN], special=True)
        added.update({IMAGE_START_TOKEN: start_id, IMAGE_END_TOKEN: end_id})
    if embed.shape[0] != len(tokenizer):
        raise CheckpointError(
            f"the state dict's embed_tokens has {embed.shape[0]} rows but {vlm}'s tokenizer with {', '.join(added)} "
            f"has {len(tokenizer)} tokens; is --vlm the --version the training started from?"
        )

    tower_source = resolve_vision_tower(source, tower_name)
    tower, vision_config, image_processor = load_vision_tower(tower_source, dtype, weights=not tower_state)
    text_config = text_config_from_lisa({**source_config, "vocab_size": embed.shape[0]})
    config = ReasonSegConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        sam_config=sam_config_from_tensors(sam_state).to_dict(),
        projector_type=source_config.get("mm_projector_type", "linear"),
        vision_feature_layer=int(source_config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=source_config.get("mm_vision_select_feature", "patch"),
        seg_token_id=seg_id,
        seg_hidden_position="before",
        mask_selection="first",
    )
    native.update({f"sam.{k}": v for k, v in convert_sam_state_dict(sam_state).items()})
    native.update(tower_state)
    del sam_state, tower_state
    model = build_on_meta(ReasonSegForCausalLM, config)
    if tower is not None:  # a state dict without the frozen tower (older zero_to_fp32): the tower's own weights
        model.vision_tower = tower
    materialize_position_ids(model)
    assign_state_dict(model, native, dtype)
    del native
    model.eval()

    chosen_conv = conv_type or guess_conv_type(str(vlm))
    settings = ProcessorSettings(
        conv_type=chosen_conv,
        use_im_start_end=use_im_start_end,
        sam_image_size=config.sam_config.vision_config.image_size,
        tokenizer_style=style,
        model_max_length=512,
    )
    processor = ReasonSegProcessor(tokenizer, image_processor, settings)
    info = {
        "converted_from": str(weights),
        "vlm": str(vlm),
        "vision_tower": tower_name,
        "vision_tower_weights": "the state dict" if tower is None else tower_name,
        "lora": {"alpha": lora_alpha, "r": lora_r, "targets": list(lora_targets)},
        "dtype": str(dtype).removeprefix("torch."),
        "conv_type": chosen_conv,
        "added_tokens": added,
    }
    return save_native(model, processor, out, extra_files={BUILD_INFO_NAME: json.dumps(info, indent=2) + "\n"})
