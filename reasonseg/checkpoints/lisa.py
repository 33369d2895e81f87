"""Original LISA checkpoints (``LISAForCausalLM``, model_type ``llava``) -> a reasonseg model and processor.

Layout of such a checkpoint: LLaVA v1 LLaMA keys under ``model.`` + ``lm_head``, the projector at
``model.mm_projector``, SAM with segment-anything names under ``model.visual_model.``, the [SEG] projection at
``model.text_hidden_fcs.0``. The CLIP tower is usually left out and named by ``vision_tower`` in config.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import AutoImageProcessor, CLIPVisionModel, LlamaConfig

from ..errors import CheckpointError
from ..modeling.configuration_reasonseg import ReasonSegConfig
from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
from ..processing.processing_reasonseg import ProcessorSettings, ReasonSegProcessor
from ..processing.tokenization import load_tokenizer, token_id
from .materialize import assign_state_dict, build_on_meta
from .sam_keys import convert_sam_state_dict, infer_sam_config
from .state_dicts import iter_checkpoint_tensors

SAM_PREFIX = "model.visual_model."
_LLM_RENAMES = [
    (r"^model\.(embed_tokens|layers|norm)\.", r"language_model.model.\1."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.mm_projector\.(weight|bias)$", r"multi_modal_projector.0.\1"),
    (r"^model\.mm_projector\.(\d+)\.", r"multi_modal_projector.\1."),
    (r"^model\.text_hidden_fcs\.0\.(\d+)\.", r"seg_projection.layers.\1."),
    (r"^model\.vision_tower\.vision_tower\.", "vision_tower."),
]


def is_lisa_config(config: dict) -> bool:
    return "LISAForCausalLM" in (config.get("architectures") or [])


def lisa_key_to_native(key: str) -> str | None:
    """A LISA key (outside SAM) -> reasonseg key; None for tensors reasonseg recomputes (rotary tables)."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    for pattern, replacement in _LLM_RENAMES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    raise CheckpointError(f"unexpected tensor {key!r} in the LISA checkpoint; is it a LISA model?")


def resolve_vision_tower(checkpoint_dir: Path, name: str) -> str:
    """A ``vision_tower`` entry is a hub id or a path; a relative path is tried relative to the checkpoint first."""
    candidate = checkpoint_dir / name
    if candidate.is_dir():
        return str(candidate)
    return name


def text_config_from_lisa(config: dict) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=config.get("rope_theta", 10000.0),
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 0),
        tie_word_embeddings=False,
    )


def load_lisa_checkpoint(
    checkpoint_dir: str | Path, dtype: torch.dtype = torch.float32, vision_tower: str | None = None
) -> tuple[ReasonSegForCausalLM, ReasonSegProcessor]:
    """Load an original LISA checkpoint directory as a reasonseg model and processor.

    Tensors are streamed shard by shard into a model built on the ``meta`` device and cast one at a time, so peak
    memory stays near one copy of the weights in ``dtype``.
    """
    checkpoint_dir = Path(checkpoint_dir)
    lisa_config = json.loads((checkpoint_dir / "config.json").read_text())
    tower_name = vision_tower or lisa_config.get("vision_tower") or lisa_config.get("mm_vision_tower")
    if not tower_name:
        raise CheckpointError(f"{checkpoint_dir}: config.json names no vision_tower; pass --vision-tower PATH_OR_ID")
    tower_source = resolve_vision_tower(checkpoint_dir, tower_name)
    try:
        clip = CLIPVisionModel.from_pretrained(tower_source, dtype=dtype)
        image_processor = AutoImageProcessor.from_pretrained(tower_source)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"could not load the CLIP vision tower {tower_name!r} (tried {checkpoint_dir / tower_name} and the hub id "
            f"{tower_name!r}: {str(err).splitlines()[0]}); pass --vision-tower PATH_OR_ID (vision_tower=...)"
        ) from None

    sam_tensors, native_tensors = {}, {}
    for key, tensor in iter_checkpoint_tensors(checkpoint_dir):
        if key.startswith(SAM_PREFIX):
            sam_tensors[key[len(SAM_PREFIX) :]] = tensor
            continue
        native = lisa_key_to_native(key)
        if native is not None:
            native_tensors[native] = tensor
    if not sam_tensors:
        raise CheckpointError(f"{checkpoint_dir} has no SAM weights under {SAM_PREFIX!r}; it is not a LISA checkpoint")

    tokenizer = load_tokenizer(checkpoint_dir, "llama_legacy")
    seg_id = token_id(tokenizer, "[SEG]")
    if seg_id is None:
        raise CheckpointError(f"{checkpoint_dir}: the tokenizer has no [SEG] token; it is not a LISA checkpoint")
    projector_type = lisa_config.get("mm_projector_type", "linear")
    config = ReasonSegConfig(
        vision_config=clip.config.to_dict(),
        text_config=text_config_from_lisa(lisa_config).to_dict(),
        sam_config=infer_sam_config(sam_tensors).to_dict(),
        projector_type=projector_type,
        vision_feature_layer=lisa_config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=lisa_config.get("mm_vision_select_feature", "patch"),
        seg_token_id=seg_id,
        seg_hidden_position="before",
        mask_selection="first",
    )
    native_tensors.update({f"sam.{k}": v for k, v in convert_sam_state_dict(sam_tensors).items()})
    model = build_on_meta(ReasonSegForCausalLM, config)
    model.vision_tower = clip
    assign_state_dict(model, native_tensors, dtype)
    model.eval()

    settings = ProcessorSettings(
        conv_type="llava_llama_2" if "llama2" in checkpoint_dir.name.lower().replace("-", "") else "llava_v1",
        use_im_start_end=bool(lisa_config.get("mm_use_im_start_end", False)),
        tokenizer_style="llama_legacy",
        model_max_length=512,
    )
    return model, ReasonSegProcessor(tokenizer, image_processor, settings)
