"""Sa2VA checkpoints of the Qwen-VL family (``Sa2VAChatModelQwen``: Sa2VA-Qwen2_5-VL-3B/7B, Sa2VA-Qwen3-VL-4B) ->
a reasonseg :class:`Sa2VAQwenForCausalLM` and :class:`Sa2VAQwenProcessor`, without the checkpoint's remote code.

What such a checkpoint holds (Sa2VA's ``Sa2VAChatConfigQwen`` subclasses transformers' Qwen-VL config and its
model wraps ``Qwen2_5_VLForConditionalGeneration`` as ``model``):

* ``config.json``: a Qwen-VL config (``vision_config`` with ``model_type`` ``"qwen2_5_vl"``, ``text_config``,
  ``image_token_id``, ``vision_start_token_id`` ...; older saves keep the text settings at the top level, which
  transformers' config class reads as well) plus ``architectures: ["Sa2VAChatModelQwen"]``, ``model_type:
  "sa2va_chat"`` and ``template``. The Qwen-VL family is read from ``vision_config.model_type`` (or
  ``text_config.model_type``).
* tensors: ``model.`` + the Qwen-VL model's own names (``model.model.visual.*``, ``model.model.language_model.*``,
  ``model.lm_head.*``; or the pre-4.52 transformers layout ``model.visual.*``, ``model.model.*``),
  ``grounding_encoder.sam2_model.*`` (SAM2, named as in the InternVL family) and ``text_hidden_fcs.{0,2}``.
* the tokenizer (with ``[SEG]``) and, optionally, ``preprocessor_config.json`` (patch, merge and temporal patch
  sizes, mean/std). Sa2VA's ``predict_forward`` passes ``min_pixels`` 512x28x28 and ``max_pixels`` 2048x28x28.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError, UnsupportedError
from .sa2va import (
    NATIVE_QWEN_MODEL_TYPE, SA2VA_MODEL_TYPE, convert_sa2va_state_dict, finish_meta_model, native_items_to_sa2va,
    sam2_config_from_tensors, tensor_shapes,
)
from .state_dicts import iter_checkpoint_tensors

QWEN_FAMILIES = {"qwen2_5_vl": "Qwen2.5-VL (Sa2VA-Qwen2_5-VL-3B/7B)", "qwen3_vl": "Qwen3-VL (Sa2VA-Qwen3-VL-4B)"}
KNOWN_QWEN_FAMILIES: dict[str, str] = {}
_NOT_VLM_KEYS = ("architectures", "model_type", "auto_map", "template", "_name_or_path", "transformers_version",
                 "fixture_sam2_config", "system_message", "_attn_implementation", "attn_implementation")


def qwen_family(config: dict) -> str | None:
    """The Qwen-VL ``model_type`` of a ``Sa2VAChatModelQwen`` config (``"qwen2_5_vl"``, ``"qwen3_vl"``, ...)."""
    for sub in ("vision_config", "text_config"):
        model_type = (config.get(sub) or {}).get("model_type")
        if model_type:
            return model_type.removesuffix("_text").removesuffix("_vision")
    return None


def check_sa2va_qwen_config(config: dict) -> None:
    """A one-line error for a ``Sa2VAChatModelQwen`` checkpoint whose Qwen-VL family reasonseg does not build."""
    family = qwen_family(config)
    if family in QWEN_FAMILIES:
        return
    reason = KNOWN_QWEN_FAMILIES.get(family, "not a Qwen-VL family reasonseg knows")
    raise UnsupportedError(
        f"Sa2VAChatModelQwen with Qwen-VL model {family or '(none: no vision_config.model_type)'} is not supported "
        f"({reason}); supported: {', '.join(QWEN_FAMILIES.values())} and the InternVL family (Sa2VAChatModel)"
    )


def vlm_config_from_sa2va_qwen(raw: dict):
    from transformers import AutoConfig

    values = {k: v for k, v in raw.items() if k not in _NOT_VLM_KEYS}
    try:
        return AutoConfig.for_model(qwen_family(raw), **values)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"cannot read this Sa2VA-Qwen checkpoint's Qwen-VL config: {err}") from None


def sa2va_qwen_config(raw: dict, shapes: dict, seg_token_id: int | None):
    from ..modeling.sa2va import Sa2VAQwenConfig

    return Sa2VAQwenConfig(
        vlm_config=vlm_config_from_sa2va_qwen(raw).to_dict(),
        sam_config=sam2_config_from_tensors(shapes, raw.get("fixture_sam2_config")).to_dict(),
        seg_token_id=seg_token_id,
        template=str(raw.get("template") or "qwen_chat").replace("-", "_"),
    )


def vlm_key_to_native(key: str) -> str:
    """A Qwen-VL key as the checkpoint stores it under ``model.`` -> its name in transformers 5 (under ``vlm.``)."""
    if key.startswith("visual."):  # pre-4.52 transformers layout
        key = "model." + key
    elif key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        key = "model.language_model." + key[len("model.") :]
    return "vlm." + key


def convert_sa2va_qwen_state_dict(tensors, config) -> dict[str, torch.Tensor]:
    """Original ``(key, tensor)`` pairs -> native state dict; SAM2 and ``text_hidden_fcs`` as the InternVL family."""
    native: dict[str, torch.Tensor] = {}
    others = []
    for key, tensor in tensors:
        if key.startswith("model."):
            if not key.endswith("rotary_emb.inv_freq"):
                native[vlm_key_to_native(key[len("model.") :])] = tensor
        elif key.startswith(("grounding_encoder.", "text_hidden_fcs.")):
            others.append((key, tensor))
        else:
            raise CheckpointError(f"unexpected tensor {key!r} in the Sa2VA checkpoint; is it a Sa2VA (Qwen-VL) model?")
    native.update(convert_sa2va_state_dict(others, config))
    return native


def sa2va_qwen_processor_for(directory: Path, raw: dict):
    from ..processing.sa2va import load_sa2va_tokenizer
    from ..processing.sa2va_qwen import Sa2VAQwenProcessor, Sa2VAQwenProcessorSettings

    settings = Sa2VAQwenProcessorSettings(template=str(raw.get("template") or "qwen_chat").replace("-", "_"))
    if qwen_family(raw) == "qwen3_vl":
        settings.system_message = ""  # Qwen3-VL's chat template opens with no system turn
    if "system_message" in raw:
        settings.system_message = str(raw["system_message"] or "")
    image_config = directory / "preprocessor_config.json"
    if image_config.is_file():
        values = json.loads(image_config.read_text())
        for key in ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std"):
            if values.get(key) is not None:
                setattr(settings, key, values[key])
    return Sa2VAQwenProcessor(load_sa2va_tokenizer(directory), settings)


def load_sa2va_qwen_checkpoint(directory: str | Path, dtype: torch.dtype = torch.float32):
    """Load an original ``Sa2VAChatModelQwen`` checkpoint directory (streamed into a meta-built model, as the
    InternVL family; the mask decoder, prompt encoder and ``[SEG]`` projection kept in float32)."""
    from ..modeling.sa2va import Sa2VAQwenForCausalLM
    from .loading import read_config
    from .materialize import build_on_meta

    directory = Path(directory)
    raw = read_config(directory)
    check_sa2va_qwen_config(raw)
    processor = sa2va_qwen_processor_for(directory, raw)
    config = sa2va_qwen_config(raw, tensor_shapes(directory), processor.seg_token_id)
    model = build_on_meta(Sa2VAQwenForCausalLM, config)
    tensors = convert_sa2va_qwen_state_dict(iter_checkpoint_tensors(directory), config)
    finish_meta_model(model, tensors, dtype, directory, "vlm.lm_head.weight",
                      "vlm.model.language_model.embed_tokens.weight")
    return model.eval(), processor


def native_sa2va_qwen_classes():
    from ..modeling.sa2va import Sa2VAQwenForCausalLM
    from ..processing.sa2va_qwen import Sa2VAQwenProcessor

    return Sa2VAQwenForCausalLM, Sa2VAQwenProcessor


def save_sa2va_qwen_layout(model, tokenizer, directory: str | Path, sam2_hints: dict | None = None) -> Path:
    """Write a native model as an original-layout ``Sa2VAChatModelQwen`` checkpoint (one safetensors file,
    config.json, tokenizer): for tests and benchmarks that need original-layout checkpoints."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, rest = {}, []
    for key, tensor in model.state_dict().items():
        if key.startswith("vlm."):
            tensors["model." + key[len("vlm.") :]] = tensor
        else:
            rest.append((key, tensor))
    tensors.update(dict(native_items_to_sa2va(rest, model.config)))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.vlm_config.to_dict()
    config.update(architectures=["Sa2VAChatModelQwen"], model_type=SA2VA_MODEL_TYPE, template=model.config.template)
    # the released configs (saved by transformers 4.5x) name the family in vision_config
    config["vision_config"]["model_type"] = model.config.vlm_config.model_type
    if sam2_hints:
        config["fixture_sam2_config"] = sam2_hints
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(directory))
    return directory


__all__ = ["NATIVE_QWEN_MODEL_TYPE", "check_sa2va_qwen_config", "load_sa2va_qwen_checkpoint", "save_sa2va_qwen_layout"]
