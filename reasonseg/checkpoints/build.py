"""`reasonseg build`: a reasonseg model from the parts LISA starts from, a vision-language model and SAM weights.

    reasonseg build --vlm SRC --sam SAM --out DIR [--delta DELTA] [--vision-tower V] [--conv-type T]

``SRC`` is one of three layouts (recognised from its ``config.json``):

* ``llava``: an original LLaVA checkpoint (``LlavaLlamaForCausalLM``: LLaMA keys under ``model.`` + ``lm_head``, the
  projector at ``model.mm_projector``, the CLIP tower named by ``mm_vision_tower``), e.g.
  ``liuhaotian/LLaVA-Lightning-7B-v1-1``, ``liuhaotian/llava-v1.5-7b``. With ``--delta``, ``SRC`` is the base LLaMA
  and ``DELTA`` a LLaVA delta release (see :mod:`.delta`);
* ``llava_hf``: a transformers ``LlavaForConditionalGeneration`` (``llava-hf/llava-1.5-7b-hf``);
* ``causal_lm``: any causal language model plus ``--vision-tower``; its projector is then new (random), so the model
  needs LLaVA's projector pre-training stage before reasoning-segmentation training means anything.

``SAM`` is an original segment-anything checkpoint (``sam_vit_h_4b8939.pth``, read weights-only) or a
transformers SAM directory / hub id (``facebook/sam-vit-huge``). The encoder's shape is read off the tensors.

The result has ``[SEG]`` (and ``<im_start>``/``<im_end>`` when the VLM frames images with them) in its vocabulary,
embeddings resized (new rows from the old rows' mean and covariance, as transformers does), a new ``[SEG]``
projection (PyTorch's default initialisation, as LISA's ``initialize_lisa_modules``), and every choice recorded in
its config, processor settings and ``build_info.json``. Tensors stream into a model built on the ``meta`` device, so
peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError, UnsupportedError
from ..modeling.image_attention import check_image_attention
from .loading import PRECISIONS, locate_checkpoint, read_config, read_sam_config

VLM_LAYOUTS = ("llava", "llava_hf", "causal_lm")
BUILD_INFO_NAME = "build_info.json"
STAGE_INFO_NAME = "reasonseg_stage.json"  # written by `reasonseg pretrain vlm` beside the toy LLaVA it saves
# segment-anything checkpoints end in .pth; .pt/.bin/.safetensors files with the same keys are taken too
SAM_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass
class BuildReport:
    """What ``build`` did, written beside the checkpoint as ``build_info.json``."""

    vlm: str
    vlm_layout: str
    sam: str
    sam_format: str
    delta: str | None = None
    vision_tower: str | None = None
    dtype: str = "float32"
    conv_type: str = "llava_v1"
    image_placement: str = "before_text"
    image_attention: str = "causal"
    tokenizer_style: str = "default"
    use_im_start_end: bool = False
    added_tokens: dict[str, int] = field(default_factory=dict)
    vocab_size: int = 0
    new_parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _VlmParts:
    """The vision-language side, in native (``ReasonSegForCausalLM``) names."""

    vision_config: object
    text_config: object
    tokenizer: object
    tokenizer_style: str
    image_processor: object
    modules: dict[str, nn.Module] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    projector_type: str = "linear"
    fresh_projector: bool = False
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "patch"
    use_im_start_end: bool = False
    vision_tower: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# the public entry points


def build_model(
    vlm: str | Path,
    sam: str | Path,
    *,
    delta: str | Path | None = None,
    vision_tower: str | None = None,
    conv_type: str | None = None,
    precision: str = "auto",
    use_im_start_end: bool | None = None,
    projector_type: str = "mlp2x_gelu",
    seed: int = 0,
):
    """Assemble a reasonseg model from a VLM and SAM; returns ``(model, processor, report)``.

    precision: ``"auto"`` keeps the VLM's storage dtype (``torch_dtype`` in its config), else fp32/bf16/fp16.
    use_im_start_end: frame the image with ``<im_start>``/``<im_end>`` (default: as the VLM does; LISA's own training
    turns it on for every VLM). projector_type: only for a plain causal LM, whose projector is new.
    seed: the random initialisation of the new parts ([SEG] projection, new embedding rows, a new projector).
    """
    from ..modeling.configuration_reasonseg import ReasonSegConfig
    from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
    from ..modeling.projector import build_projector
    from ..modeling.seg_projection import SegProjection
    from ..processing.conversation import IMAGE_END_TOKEN, IMAGE_START_TOKEN, get_template
    from ..processing.processing_reasonseg import ProcessorSettings, ReasonSegProcessor
    from ..processing.tokenization import add_seg_token, add_tokens
    from .materialize import assign_state_dict, build_on_meta

    vlm_dir = locate_checkpoint(vlm)
    delta_dir = locate_checkpoint(delta) if delta is not None else None
    layout_config = read_config(delta_dir or vlm_dir)
    layout = vlm_layout(layout_config, delta_dir or vlm_dir)
    if delta_dir is not None and layout != "llava":
        raise InputError(f"--delta {delta} is not an original LLaVA delta (its config.json has no mm_vision_tower)")
    dtype = resolve_dtype(precision, layout_config)
    if conv_type is not None:
        get_template(conv_type)  # fails early, with the list of templates, on a typo

    if layout == "llava_hf" and vision_tower:
        raise InputError("--vision-tower is for a plain language model (or an original LLaVA); a llava-hf model has its own")
    if layout == "causal_lm" and not vision_tower:
        raise InputError(
            f"{vlm} is a plain {layout_config.get('model_type', 'causal')!r} language model: name its vision tower "
            "with --vision-tower (e.g. openai/clip-vit-large-patch14)"
        )
    # SAM (2.5 GB for ViT-H) before the language model (13 GB for a 7B), so a wrong --sam is refused in seconds
    sam_config, sam_module, sam_tensors, sam_format = load_sam_part(sam, dtype)
    if layout == "llava":
        parts = _llava_parts(vlm_dir, delta_dir, layout_config, vision_tower, dtype)
    elif layout == "llava_hf":
        parts = _llava_hf_parts(vlm_dir, dtype)
    else:
        parts = _causal_lm_parts(vlm_dir, vision_tower, dtype, projector_type)

    config = ReasonSegConfig(
        vision_config=parts.vision_config.to_dict(),
        text_config=parts.text_config.to_dict(),
        sam_config=sam_config.to_dict(),
        projector_type=parts.projector_type,
        vision_feature_layer=parts.vision_feature_layer,
        vision_feature_select_strategy=parts.vision_feature_select_strategy,
        seg_hidden_position="before",
        mask_selection="first",
    )
    model = build_on_meta(ReasonSegForCausalLM, config)
    for name, module in parts.modules.items():
        setattr(model, name, module)
    if sam_module is not None:
        model.sam = sam_module
    new_parts = ["seg_projection"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # PyTorch's default initialisation, as LISA's initialize_lisa_modules (and LLaVA's projector) get it
        model.seg_projection = SegProjection(config.text_config.hidden_size, config.seg_embedding_dim).to(dtype)
        if parts.fresh_projector:
            model.multi_modal_projector = build_projector(
                parts.projector_type, config.vision_config.hidden_size, config.text_config.hidden_size
            ).to(dtype)
            new_parts.append("multi_modal_projector")
    tensors = dict(parts.tensors)
    tensors.update({f"sam.{k}": v for k, v in sam_tensors.items()})
    materialize_position_ids(model)
    assign_state_dict(model, tensors, dtype)
    del tensors, sam_tensors

    tokenizer = parts.tokenizer
    im_start_end = parts.use_im_start_end if use_im_start_end is None else bool(use_im_start_end)
    before = len(tokenizer)
    seg_id = add_seg_token(tokenizer)
    added = {"[SEG]": seg_id}
    if im_start_end:
        start_id, end_id = add_tokens(tokenizer, [IMAGE_START_TOKEN, IMAGE_END_TOKEN], special=True)
        added.update({IMAGE_START_TOKEN: start_id, IMAGE_END_TOKEN: end_id})
    rows = model.get_input_embeddings().weight.shape[0]
    notes = []
    if len(tokenizer) > rows:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.resize_token_embeddings(len(tokenizer))
        new_parts.append(f"embedding rows {rows}..{len(tokenizer) - 1}")
    elif len(tokenizer) > before:
        notes.append(f"the embedding already had {rows} rows (padded vocabulary); the new tokens use rows {before}+ as they are")
    model.config.seg_token_id = seg_id
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.eval()

    stage = read_stage_info(vlm_dir)
    image_attention = stage.get("image_attention", "causal")
    check_image_attention(image_attention)
    model.config.image_attention = image_attention
    chosen_conv = conv_type or stage.get("conv_type") or guess_conv_type(str(delta or vlm))
    settings = ProcessorSettings(
        conv_type=chosen_conv,
        image_placement=stage.get("image_placement", "before_text"),
        use_im_start_end=im_start_end,
        sam_image_size=sam_config.vision_config.image_size,
        tokenizer_style=parts.tokenizer_style,
        model_max_length=512,
    )
    processor = ReasonSegProcessor(tokenizer, parts.image_processor, settings)
    if parts.fresh_projector:
        notes.append(
            "the projector is new (random): pre-train it on image-caption data (LLaVA's stage 1) before training "
            "reasoning segmentation; see docs/build_from_parts.md"
        )
    report = BuildReport(
        vlm=str(vlm),
        vlm_layout=layout,
        sam=str(sam),
        sam_format=sam_format,
        delta=str(delta) if delta is not None else None,
        vision_tower=parts.vision_tower,
        dtype=str(dtype).removeprefix("torch."),
        conv_type=chosen_conv,
        image_placement=settings.image_placement,
        image_attention=model.config.image_attention,
        tokenizer_style=parts.tokenizer_style,
        use_im_start_end=im_start_end,
        added_tokens=added,
        vocab_size=model.config.text_config.vocab_size,
        new_parts=new_parts,
        notes=notes,
    )
    return model, processor, report


def build_checkpoint(vlm, sam, out: str | Path, **kwargs) -> tuple[Path, BuildReport]:
    """:func:`build_model`, then write the checkpoint (model, processor, ``build_info.json``) atomically to ``out``."""
    from .convert import save_native

    out = Path(out)
    if out.exists() and any(out.iterdir()):  # before spending minutes on loading
        raise CheckpointError(f"{out} exists and is not empty; choose a new --out directory")
    model, processor, report = build_model(vlm, sam, **kwargs)
    path = save_native(model, processor, out, extra_files={BUILD_INFO_NAME: json.dumps(report.to_dict(), indent=2) + "\n"})
    return path, report


# ---------------------------------------------------------------------------------------------------------------
# recognising the inputs


def vlm_layout(config: dict, directory: Path) -> str:
    """``llava`` (original LLaVA), ``llava_hf`` or ``causal_lm``; a LISA or reasonseg checkpoint is refused."""
    architectures = config.get("architectures") or []
    if config.get("model_type") == "reasonseg":
        raise InputError(f"{directory} is already a reasonseg model: train from it directly (model: {directory})")
    if "LISAForCausalLM" in architectures:
        raise InputError(f"{directory} is already a LISA model: train from it directly (model: {directory})")
    if "mm_vision_tower" in config or any(a.startswith("LlavaLlama") for a in architectures):
        if "mpt" in str(config.get("model_type", "")).lower() or any("Mpt" in a for a in architectures):
            raise UnsupportedError(f"{directory}: LLaVA on MPT is not supported; use a LLaMA-based LLaVA")
        return "llava"
    if "vision_config" in config and "text_config" in config:
        if "LlavaForConditionalGeneration" not in architectures:
            raise UnsupportedError(
                f"{directory} is a {', '.join(architectures) or config.get('model_type')} model; --vlm takes an original "
                "LLaVA, a transformers LlavaForConditionalGeneration, or a plain causal LM with --vision-tower"
            )
        return "llava_hf"
    return "causal_lm"


def resolve_dtype(precision: str, config: dict) -> torch.dtype:
    if precision == "auto":
        stored = config.get("torch_dtype") or config.get("dtype") or "float32"
        dtype = getattr(torch, str(stored), None)
        return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use auto or one of: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def read_stage_info(directory: Path) -> dict:
    """How a VLM trained by ``reasonseg pretrain vlm`` lays out its prompts (template, image placement) and attends to
    its image (image attention); ``{}`` for any other VLM."""
    path = directory / STAGE_INFO_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} is not valid JSON; delete it, or rewrite it as "
                              '{"conv_type": "llava_v1", "image_placement": "before_text"}') from None


def guess_conv_type(name: str) -> str:
    """LISA's convention: Llama-2-chat based LLaVA models use the ``llava_llama_2`` template, the rest ``llava_v1``."""
    return "llava_llama_2" if re.search(r"llama[-_]?2", name.lower()) else "llava_v1"


def tokenizer_style_for(directory: Path, text_model_type: str) -> str:
    """LLaMA checkpoints with a sentencepiece model were trained with transformers 4.31's slow tokenizer."""
    return "llama_legacy" if text_model_type == "llama" and (directory / "tokenizer.model").is_file() else "default"


def _load_tokenizer(directory: Path, style: str):
    from ..processing.tokenization import load_tokenizer

    try:
        tokenizer = load_tokenizer(directory, style)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not load the tokenizer of {directory} ({str(err).splitlines()[0]})") from None
    # a llava-hf tokenizer names LlavaProcessor, which would make AutoProcessor load the wrong class
    getattr(tokenizer, "init_kwargs", {}).pop("processor_class", None)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# vision towers


def load_vision_tower(source: str, dtype: torch.dtype, weights: bool = True):
    """``(vision model or None, its config, image processor)`` of a CLIP/SigLIP-style tower (a hub id or a path; a
    full CLIP checkpoint gives its vision half). ``weights=False`` reads only the config and image processor."""
    from transformers import AutoConfig, AutoImageProcessor
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        config = AutoConfig.from_pretrained(source)
        vision_config = getattr(config, "vision_config", None) or config
        image_processor = AutoImageProcessor.from_pretrained(source)
        tower = None
        if weights:
            tower_class = MODEL_MAPPING[type(vision_config)]
            tower = tower_class.from_pretrained(source, config=vision_config, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"could not load the vision tower {source!r} ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "pass --vision-tower PATH_OR_HUB_ID of a CLIP or SigLIP model"
        ) from None
    return tower, vision_config, image_processor


def materialize_position_ids(model: nn.Module) -> None:
    """Vision embeddings keep a non-persistent ``position_ids`` buffer; on a meta-built tower it is recreated here
    (``arange``), before the rest is rebuilt, so the assigned weights of those modules are kept."""
    for module in model.modules():
        buffer = module._buffers.get("position_ids")
        if buffer is not None and buffer.is_meta:
            module._buffers["position_ids"] = torch.arange(buffer.shape[-1]).expand(buffer.shape).clone()


def _strip_vision_model(key: str) -> str:
    """CLIP tower keys with and without the ``vision_model.`` level (4.x saves and hub files have it)."""
    return key[len("vision_model.") :] if key.startswith("vision_model.") else key


# ---------------------------------------------------------------------------------------------------------------
# the three VLM layouts


def _llava_parts(vlm_dir: Path, delta_dir: Path | None, config: dict, vision_tower: str | None, dtype) -> _VlmParts:
    from .lisa import lisa_key_to_native, resolve_vision_tower, text_config_from_lisa
    from .state_dicts import iter_checkpoint_tensors

    source_dir = delta_dir or vlm_dir
    tower_name = vision_tower or config.get("mm_vision_tower") or config.get("vision_tower")
    if not tower_name:
        raise CheckpointError(f"{source_dir}/config.json names no mm_vision_tower; pass --vision-tower PATH_OR_ID")
    tower_source = resolve_vision_tower(source_dir, tower_name)
    tower, vision_config, image_processor = load_vision_tower(tower_source, dtype)
    projector_type = config.get("mm_projector_type", "linear")
    if projector_type not in ("linear", "mlp2x_gelu"):
        raise UnsupportedError(f"{source_dir}: projector type {projector_type!r}; supported: linear, mlp2x_gelu")
    select = config.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise UnsupportedError(f"{source_dir}: mm_vision_select_feature {select!r}; supported: patch, cls_patch")

    if delta_dir is not None:
        from .delta import iter_delta_applied

        stream = iter_delta_applied(vlm_dir, delta_dir, dtype)
    else:
        stream = iter_checkpoint_tensors(vlm_dir)
    tensors, tower_tensors = {}, {}
    for key, tensor in stream:
        if key.startswith("model.vision_tower."):
            inner = re.sub(r"^model\.vision_tower\.(vision_tower\.)?", "", key)
            if not inner.endswith("position_ids"):
                tower_tensors[_strip_vision_model(inner)] = tensor
            continue
        if key.startswith(("model.visual_model.", "model.text_hidden_fcs.")):
            raise InputError(f"{source_dir} holds LISA weights ({key}); it is a LISA model, train from it directly")
        native = lisa_key_to_native(key)
        if native is not None:
            tensors[native] = tensor
    if not any(k.startswith("multi_modal_projector.") for k in tensors):
        raise CheckpointError(
            f"{source_dir} has no projector weights (model.mm_projector.*); for a language model without one use "
            "--vlm with --vision-tower (a new projector), or merge LLaVA's mm_projector.bin first"
        )
    if tower_tensors:  # a tower saved inside the LLaVA checkpoint (fine-tuned with it) wins over the hub copy
        try:
            tower.load_state_dict({k: v.to(dtype) for k, v in tower_tensors.items()}, strict=True)
        except RuntimeError as err:
            detail = " ".join(line.strip() for line in str(err).splitlines()[1:2])
            raise CheckpointError(f"{source_dir}: its vision-tower tensors do not fit {tower_name} ({detail})") from None
    text_config = text_config_from_lisa(config)
    style = tokenizer_style_for(source_dir, "llama")
    return _VlmParts(
        vision_config=vision_config,
        text_config=text_config,
        tokenizer=_load_tokenizer(source_dir, style),
        tokenizer_style=style,
        image_processor=image_processor,
        modules={"vision_tower": tower},
        tensors=tensors,
        projector_type=projector_type,
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=select,
        use_im_start_end=bool(config.get("mm_use_im_start_end", False)),
        vision_tower=tower_name,
    )


def _llava_hf_parts(vlm_dir: Path, dtype) -> _VlmParts:
    from transformers import AutoImageProcessor, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig.from_pretrained(str(vlm_dir))
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise UnsupportedError(
            f"{vlm_dir}: projector with {config.projector_hidden_act!r} activation"
            f"{'' if getattr(config, 'multimodal_projector_bias', True) else ' and no bias'}; supported: LLaVA-1.5's GELU MLP"
        )
    if not isinstance(config.vision_feature_layer, int):
        raise UnsupportedError(f"{vlm_dir}: features from several vision layers ({config.vision_feature_layer}) are not supported")
    strategies = {"default": "patch", "full": "cls_patch"}
    if config.vision_feature_select_strategy not in strategies:
        raise UnsupportedError(f"{vlm_dir}: vision_feature_select_strategy {config.vision_feature_select_strategy!r}")
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(str(vlm_dir), dtype=dtype)
        image_processor = AutoImageProcessor.from_pretrained(str(vlm_dir))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not load {vlm_dir} as a LlavaForConditionalGeneration ({str(err).splitlines()[0]})") from None
    body = llava.model
    tensors = {}
    # the language model's own prefix inside its CausalLM class (``model`` for LLaMA, Mistral, Qwen2, ...)
    for key, tensor in body.language_model.state_dict().items():
        tensors[f"language_model.model.{key}"] = tensor
    tensors["language_model.lm_head.weight"] = llava.lm_head.weight
    projector = body.multi_modal_projector
    for native, part in (("0", projector.linear_1), ("2", projector.linear_2)):
        tensors[f"multi_modal_projector.{native}.weight"] = part.weight
        tensors[f"multi_modal_projector.{native}.bias"] = part.bias
    text_config = config.text_config
    style = tokenizer_style_for(vlm_dir, text_config.model_type)
    return _VlmParts(
        vision_config=config.vision_config,
        text_config=text_config,
        tokenizer=_load_tokenizer(vlm_dir, style),
        tokenizer_style=style,
        image_processor=image_processor,
        modules={"vision_tower": body.vision_tower},
        tensors={k: v.detach() for k, v in tensors.items()},
        projector_type="mlp2x_gelu",
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=strategies[config.vision_feature_select_strategy],
        use_im_start_end=False,
    )


def _causal_lm_parts(vlm_dir: Path, vision_tower: str, dtype, projector_type: str) -> _VlmParts:
    from transformers import AutoModelForCausalLM

    from ..modeling.configuration_reasonseg import PROJECTOR_TYPES

    if projector_type not in PROJECTOR_TYPES:
        raise InputError(f"unknown projector type {projector_type!r}; use one of: {', '.join(PROJECTOR_TYPES)}")
    tower, vision_config, image_processor = load_vision_tower(vision_tower, dtype)
    try:
        language_model = AutoModelForCausalLM.from_pretrained(str(vlm_dir), dtype=dtype)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not load {vlm_dir} as a causal language model ({str(err).splitlines()[0]})") from None
    style = tokenizer_style_for(vlm_dir, language_model.config.model_type)
    return _VlmParts(
        vision_config=vision_config,
        text_config=language_model.config,
        tokenizer=_load_tokenizer(vlm_dir, style),
        tokenizer_style=style,
        image_processor=image_processor,
        modules={"vision_tower": tower, "language_model": language_model},
        projector_type=projector_type,
        fresh_projector=True,
        vision_tower=vision_tower,
    )


# ---------------------------------------------------------------------------------------------------------------
# SAM


def load_sam_part(sam: str | Path, dtype: torch.dtype):
    """``(SamConfig, SamModel or None, tensors in SamModel names, format)`` of an original segment-anything file or
    a transformers SAM directory / hub id."""
    from transformers import SamConfig, SamModel

    from .state_dicts import load_tensor_file

    path = Path(sam).expanduser()
    if path.is_file():
        if path.suffix not in SAM_FILE_SUFFIXES:
            raise InputError(f"--sam {path}: expected a segment-anything .pth file or a transformers SAM directory")
        state = load_tensor_file(path)
        state = _strip_common_prefix(state)
        if "image_encoder.patch_embed.proj.weight" not in state:
            raise CheckpointError(
                f"{path} is not a segment-anything checkpoint (no image_encoder.patch_embed.proj.weight among its "
                f"{len(state)} tensors)"
            )
        config = sam_config_from_tensors(state)
        from .sam_keys import convert_sam_state_dict

        return config, None, convert_sam_state_dict(state), "segment_anything"
    if path.is_dir() and not (path / "config.json").is_file():
        candidates = sorted(p.name for p in path.glob("*.pth"))
        hint = f"; did you mean {path / candidates[0]}?" if candidates else ""
        raise InputError(f"--sam {path} is a directory without config.json{hint}")
    directory = locate_checkpoint(sam)
    try:
        read_sam_config(directory)
    except CheckpointError as err:
        raise UnsupportedError(f"--sam: {err}; pass a SAM (ViT-B/L/H) checkpoint") from None
    try:
        module = SamModel.from_pretrained(str(directory), dtype=dtype)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not load {directory} as a transformers SAM ({str(err).splitlines()[0]})") from None
    return SamConfig.from_pretrained(str(directory)), module, {}, "transformers"


def _strip_common_prefix(state: dict) -> dict:
    """Accept SAM tensors saved under a wrapper prefix (``visual_model.``, ``module.``, ``sam.``)."""
    for prefix in ("module.", "model.visual_model.", "visual_model.", "sam."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def sam_config_from_tensors(state: dict[str, torch.Tensor]):
    """``infer_sam_config`` plus what the tensors also fix: the input size (``pos_embed``'s grid x patch) and the
    width of the random-feature positional encoding."""
    from .sam_keys import infer_sam_config

    patch = state["image_encoder.patch_embed.proj.weight"].shape[-1]
    pos_embed = state.get("image_encoder.pos_embed")
    image_size = pos_embed.shape[1] * patch if pos_embed is not None else 1024
    config = infer_sam_config(state, image_size=image_size)
    gaussian = state.get("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    if gaussian is not None:
        config.vision_config.num_pos_feats = gaussian.shape[1]
    return config
