"""One entry point for every checkpoint kind: find it, recognise it, load model + processor, place it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError, UnsupportedError
from ..modeling.modeling_reasonseg import ReasonSegForCausalLM
from ..processing.processing_reasonseg import ReasonSegProcessor

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# parts kept out of 8/4-bit quantisation (LISA likewise skips its visual model)
QUANTIZATION_SKIP_MODULES = ["vision_tower", "multi_modal_projector", "sam", "seg_projection", "language_model.lm_head"]
SUPPORTED_KINDS = (
    "a reasonseg checkpoint (model_type 'reasonseg'), an original LISA checkpoint (LISAForCausalLM) "
    "or a Sa2VA checkpoint (Sa2VAChatModel, Sa2VAChatModelQwen)"
)
SA2VA_KINDS = ("sa2va", "reasonseg_sa2va")
SA2VA_QWEN_KINDS = ("sa2va_qwen", "reasonseg_sa2va_qwen")


def parse_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def locate_checkpoint(name_or_path: str | Path) -> Path:
    """A local directory as is; otherwise a hub id, downloaded (or taken from the local hub cache)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    if str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint {name_or_path!r} not found: no such directory, and not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path)))
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointError(
            f"could not fetch {name_or_path!r} from the Hugging Face hub ({type(err).__name__}); "
            "download it elsewhere and pass its local directory"
        ) from None


def read_config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json; it is not a model checkpoint ({SUPPORTED_KINDS})")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def read_sam_config(directory: Path) -> dict:
    """``read_config`` of a saved transformers SAM; a CheckpointError names the kind found instead."""
    config = read_config(Path(directory))
    if config.get("model_type") != "sam":
        raise CheckpointError(f"{directory} holds a {config.get('model_type', 'unknown')!r} model, not a SAM")
    return config


def checkpoint_kind(config: dict) -> str:
    from .lisa import is_lisa_config

    if config.get("model_type") == "reasonseg":
        return "reasonseg"
    if is_lisa_config(config):
        return "lisa"
    from .sa2va import sa2va_kind

    sa2va = sa2va_kind(config)  # raises for Sa2VA variants reasonseg does not implement
    if sa2va is not None:
        return sa2va
    architectures = ", ".join(config.get("architectures") or []) or "no architectures"
    if "mm_vision_tower" in config or "LlavaForConditionalGeneration" in architectures:
        raise CheckpointError(
            f"this checkpoint is a LLaVA vision-language model ({architectures}), not a segmentation model; build one "
            "from it: reasonseg build --vlm THIS_DIR --sam sam_vit_h_4b8939.pth --out NEW_DIR"
        )
    raise CheckpointError(
        f"this checkpoint is a {config.get('model_type', 'unknown')!r} model ({architectures}); "
        f"reasonseg loads {SUPPORTED_KINDS}"
    )


def apply_precision_policy(model: ReasonSegForCausalLM, dtype: torch.dtype, device: str) -> None:
    """Language model, vision tower and projector in ``dtype``; SAM's image encoder in ``dtype`` except fp16 on
    CPU (kept fp32: CPU half kernels are slow or missing); mask decoder, prompt encoder and [SEG] projection in
    fp32, where the small mask logits keep their precision at negligible cost."""
    encoder_dtype = torch.float32 if (dtype == torch.float16 and str(device).startswith("cpu")) else dtype
    model.sam.vision_encoder.to(encoder_dtype)
    for part in (model.sam.mask_decoder, model.sam.prompt_encoder, model.sam.shared_image_embedding, model.seg_projection):
        part.to(torch.float32)


def quantization_config(load_in_8bit: bool, load_in_4bit: bool):
    """bitsandbytes settings, keeping reasonseg's (LISA's) parts out; a model class with other parts names them."""
    if not (load_in_8bit or load_in_4bit):
        return None
    if load_in_8bit and load_in_4bit:
        raise InputError("choose one of --load-in-8bit and --load-in-4bit")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise UnsupportedError("8/4-bit loading needs bitsandbytes: pip install 'reasonseg[quant]'") from None
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(QUANTIZATION_SKIP_MODULES))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=list(QUANTIZATION_SKIP_MODULES),
    )


def load_model_and_processor(
    name_or_path: str | Path,
    precision: str = "fp32",
    device: str | None = None,
    vision_tower: str | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
) -> tuple[ReasonSegForCausalLM, ReasonSegProcessor]:
    """Load any supported checkpoint (local directory or hub id) ready for inference."""
    dtype = parse_precision(precision)
    device = device or default_device()
    directory = locate_checkpoint(name_or_path)
    kind = checkpoint_kind(read_config(directory))
    quantization = quantization_config(load_in_8bit, load_in_4bit)
    if kind == "lisa" and quantization is None and device_map is None:
        from .lisa import load_lisa_checkpoint

        model, processor = load_lisa_checkpoint(directory, dtype=dtype, vision_tower=vision_tower)
    elif kind == "sa2va" and quantization is None and device_map is None:
        from .sa2va import load_sa2va_checkpoint

        model, processor = load_sa2va_checkpoint(directory, dtype=dtype)
    elif kind == "sa2va_qwen" and quantization is None and device_map is None:
        from .sa2va_qwen import load_sa2va_qwen_checkpoint

        model, processor = load_sa2va_qwen_checkpoint(directory, dtype=dtype)
    else:
        model_class, processor_class = ReasonSegForCausalLM, ReasonSegProcessor
        if kind == "lisa":
            directory = converted_lisa_cache(directory, vision_tower)
        elif kind in SA2VA_KINDS + SA2VA_QWEN_KINDS:
            from .sa2va import converted_sa2va_cache, native_sa2va_classes
            from .sa2va_qwen import native_sa2va_qwen_classes

            directory = converted_sa2va_cache(directory) if kind in ("sa2va", "sa2va_qwen") else directory
            classes = native_sa2va_qwen_classes if kind in SA2VA_QWEN_KINDS else native_sa2va_classes
            model_class, processor_class = classes()
        kwargs = {"dtype": dtype}
        if quantization is not None:
            quantization.llm_int8_skip_modules = list(
                getattr(model_class, "quantization_skip_modules", QUANTIZATION_SKIP_MODULES))
            # bitsandbytes warns on every int8 matmul that fp32 inputs are cast to fp16
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            kwargs["quantization_config"] = quantization
            kwargs["device_map"] = device_map or device
        elif device_map is not None:
            if device_map == "auto":
                device_map = plan_device_map(directory, dtype, max_memory, model_class)
            kwargs["device_map"] = device_map
            kwargs["offload_folder"] = str(Path.home() / ".cache" / "reasonseg" / "offload")
        model = model_class.from_pretrained(str(directory), **kwargs)
        processor = processor_class.from_pretrained(directory)
    if quantization is None and device_map is None:
        model.to(device)
    if device_map is None:  # dispatched models keep the dtype they were loaded in (offloaded weights cannot move)
        apply_precision_policy(model, dtype, device)
    model.eval()
    return model, processor


# parts that run once per image or per mask: kept whole on the first device rather than split or offloaded
PINNED_PARTS = ("vision_tower", "multi_modal_projector", "sam", "seg_projection")


def plan_device_map(directory: Path, dtype: torch.dtype, max_memory: dict | None, model_class=None) -> dict:
    """accelerate's big-model placement for the language model; the image and mask parts pinned to the first
    device (charged against its budget), where the masks are computed. A model class names its own parts with
    ``device_map_pinned_parts`` and ``device_map_language_parts`` (module paths; default: PINNED_PARTS and
    ``language_model``)."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_max_memory

    model_class = model_class or ReasonSegForCausalLM
    pinned_parts = getattr(model_class, "device_map_pinned_parts", PINNED_PARTS)
    language_parts = getattr(model_class, "device_map_language_parts", ("language_model",))
    config = model_class.config_class.from_pretrained(str(directory))
    with init_empty_weights():
        skeleton = model_class(config)
    budget = get_max_memory(max_memory)
    first = next(iter(budget))
    itemsize = torch.tensor([], dtype=dtype).element_size()
    pinned_bytes = sum(p.numel() for name in pinned_parts for p in skeleton.get_submodule(name).parameters()) * itemsize
    budget[first] = max(budget[first] - pinned_bytes, 0)
    # the language parts under their own paths in one module, so accelerate places (and ties) them together
    language = torch.nn.Module()
    for path in language_parts:
        parent = language
        *heads, leaf = path.split(".")
        for name in heads:
            parent = parent._modules.setdefault(name, torch.nn.Module())
        parent.add_module(leaf, skeleton.get_submodule(path))
    language_map = infer_auto_device_map(
        language,
        max_memory=budget,
        no_split_module_classes=skeleton._no_split_modules,
        dtype=dtype,
    )
    plan = {name: first for name in pinned_parts}
    for key, device in language_map.items():
        plan.update({path: device for path in language_parts} if not key else {key: device})
    return plan


def converted_lisa_cache(directory: Path, vision_tower: str | None) -> Path:
    """Quantised or device-mapped loading goes through transformers' loader, which needs the native layout:
    convert once into a cache directory beside the user's hub cache."""
    from .convert import convert_lisa_checkpoint

    cache_root = Path.home() / ".cache" / "reasonseg" / "converted"
    target = cache_root / f"{directory.resolve().name}-{abs(hash((str(directory.resolve()), vision_tower))) % 10**8}"
    if not (target / "config.json").is_file():
        convert_lisa_checkpoint(directory, target, vision_tower=vision_tower)
    return target
