"""Sa2VA checkpoints (``Sa2VAChatModel``, model_type ``sa2va_chat``) -> a reasonseg :class:`Sa2VAForCausalLM` and
:class:`Sa2VAProcessor`, without the checkpoint's remote code.

Layout of such a checkpoint: ``vision_model.*`` (InternViT, fused ``attn.qkv``), ``mlp1.{0,1,3}``,
``language_model.*`` (a transformers causal LM, or InternLM2), ``grounding_encoder.sam2_model.*`` (SAM2 with the
original facebookresearch names, including the video-memory parts), ``text_hidden_fcs.{0,2}``. Its config gives the
InternViT and LLM configs and the chat template; SAM2's shape is not stored (Sa2VA hard-codes SAM2-Hiera-L), so it is
read off the tensors, with the head counts, windows and global-attention blocks of SAM2's released sizes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import CheckpointError, UnsupportedError
from .key_renames import RenameTable
from .state_dicts import iter_checkpoint_tensors, weight_files

SA2VA_MODEL_TYPE = "sa2va_chat"
NATIVE_MODEL_TYPE = "reasonseg_sa2va"
NATIVE_QWEN_MODEL_TYPE = "reasonseg_sa2va_qwen"
QWEN_ARCHITECTURE = "Sa2VAChatModelQwen"  # loaded by checkpoints/sa2va_qwen.py
SUPPORTED_ARCHITECTURES = ("Sa2VAChatModel", QWEN_ARCHITECTURE)
SUPPORTED_LLMS = ("Qwen2ForCausalLM", "LlamaForCausalLM", "Phi3ForCausalLM", "InternLM2ForCausalLM")
SAM_PREFIX = "grounding_encoder.sam2_model."
# SAM2 parts used only to track objects through a video; a single image never reaches them
SAM2_VIDEO_ONLY = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "obj_ptr_proj.",
    "obj_ptr_tpos_proj.", "mask_downsample.",
)
# SAM2's released image-encoder sizes: (embed dim, blocks per stage) -> (heads, global-attention blocks, windows)
HIERA_SIZES = {
    (96, (1, 2, 7, 2)): (1, [5, 7, 9], [8, 4, 14, 7]),
    (96, (1, 2, 11, 2)): (1, [7, 10, 13], [8, 4, 14, 7]),
    (112, (2, 3, 16, 3)): (2, [12, 16, 20], [8, 4, 14, 7]),
    (144, (2, 6, 36, 4)): (2, [23, 33, 43], [8, 4, 16, 8]),
}
# fixed in Sa2VA's SAM2 (and SAM2's own configs)
SAM2_MASK_DECODER_HEADS = 8
SAM2_ATTENTION_DOWNSAMPLE = 2
SAM2_IMAGE_SIZE = 1024


# ---------------------------------------------------------------------------------------------------- recognition
def sa2va_kind(config: dict) -> str | None:
    """``"sa2va"`` (an original InternVL-family checkpoint), ``"sa2va_qwen"`` (an original Qwen-VL-family one,
    ``Sa2VAChatModelQwen``), ``"reasonseg_sa2va"`` / ``"reasonseg_sa2va_qwen"`` (converted), or None (not Sa2VA).

    Sa2VA variants reasonseg does not implement raise a one-line error naming the variant and what is supported,
    instead of running the checkpoint's remote code."""
    if config.get("model_type") in (NATIVE_MODEL_TYPE, NATIVE_QWEN_MODEL_TYPE):
        return config["model_type"]
    architectures = list(config.get("architectures") or [])
    is_sa2va = config.get("model_type") == SA2VA_MODEL_TYPE or any(a.startswith("Sa2VA") for a in architectures)
    if not is_sa2va:
        return None
    if QWEN_ARCHITECTURE in architectures:
        from .sa2va_qwen import check_sa2va_qwen_config

        check_sa2va_qwen_config(config)
        return "sa2va_qwen"
    if architectures and not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise UnsupportedError(
            f"Sa2VA variant {', '.join(architectures)} is not supported; reasonseg runs "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (it does not execute a checkpoint's remote code)"
        )
    llm = (config.get("llm_config") or {}).get("architectures") or ["(none)"]
    if llm[0] not in SUPPORTED_LLMS:
        raise UnsupportedError(
            f"this Sa2VA checkpoint's language model {llm[0]} is not supported; supported: {', '.join(SUPPORTED_LLMS)}"
        )
    return "sa2va"


# ---------------------------------------------------------------------------------------------------- configs
def tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of a checkpoint, read from safetensors headers (no tensor data loaded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(directory):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        else:
            from .state_dicts import load_tensor_file

            shapes.update({k: tuple(v.shape) for k, v in load_tensor_file(path).items()})
    return shapes


def vision_config_from_sa2va(config: dict):
    from transformers import InternVLVisionConfig

    vision = config.get("vision_config") or {}
    image_size = config.get("force_image_size") or vision.get("image_size", 448)
    return InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"],
        hidden_act=vision.get("hidden_act", "gelu"),
        norm_type=vision.get("norm_type", "layer_norm"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        image_size=image_size,
        patch_size=vision.get("patch_size", 14),
        num_channels=vision.get("num_channels", 3),
        attention_bias=bool(vision.get("qkv_bias", True)),
        use_qk_norm=bool(vision.get("qk_normalization", False)),
        layer_scale_init_value=vision.get("initializer_factor", 0.1),
        attention_dropout=0.0,
        hidden_dropout_prob=0.0,
        projection_dropout=0.0,
        use_mean_pooling=True,  # InternViT has no final norm: last_hidden_state is the last layer's output
    )


def text_config_from_sa2va(config: dict):
    from transformers import AutoConfig

    llm = dict(config.get("llm_config") or {})
    architecture = (llm.get("architectures") or [""])[0]
    if architecture == "InternLM2ForCausalLM":
        from ..modeling.sa2va.internlm2 import llama_config_from_internlm2

        return llama_config_from_internlm2(llm)
    model_type = llm.pop("model_type", None)
    for key in ("_name_or_path", "transformers_version", "auto_map", "_attn_implementation", "attn_implementation"):
        llm.pop(key, None)
    try:
        return AutoConfig.for_model(model_type, **llm)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"cannot read this Sa2VA checkpoint's llm_config ({model_type}): {err}") from None


def _hiera_layout(shapes: dict) -> tuple[int, list[int], list[int]]:
    """(embed dim, blocks per stage, embed dim per stage) from the trunk's tensors."""
    prefix = SAM_PREFIX + "image_encoder.trunk."
    block_ids = sorted({int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))})
    if not block_ids:
        raise CheckpointError("no SAM2 image-encoder blocks under grounding_encoder.sam2_model.image_encoder.trunk")
    embed_dim = shapes[prefix + "patch_embed.proj.weight"][0]
    stages, dims = [0], [embed_dim]
    for block in block_ids:
        if block > 0 and f"{prefix}blocks.{block}.proj.weight" in shapes:  # a new stage starts with a projection
            stages.append(0)
            dims.append(shapes[f"{prefix}blocks.{block}.proj.weight"][0])
        stages[-1] += 1
    return embed_dim, stages, dims


def sam2_config_from_tensors(shapes: dict, hints: dict | None = None):
    """A ``Sam2Config`` whose tensors match the checkpoint's: sizes read off the tensors; head counts, windows and
    global-attention blocks from ``hints`` (the fixture's ``fixture_sam2_config``) or SAM2's released sizes."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig
    from transformers import Sam2VisionConfig

    p = SAM_PREFIX
    embed_dim, stages, dims = _hiera_layout(shapes)
    fixed = (hints or {}).get("fixed_in_sa2va_code", {})
    image_size = int(fixed.get("image_size", SAM2_IMAGE_SIZE))
    decoder_heads = int(fixed.get("mask_decoder", {}).get("transformer_num_heads", SAM2_MASK_DECODER_HEADS))
    if hints:
        encoder = hints["image_encoder"]
        heads = int(encoder["num_heads"])
        head_mul = float(encoder.get("head_mul", 2.0))
        heads_per_stage = [int(heads * head_mul**i) for i in range(len(stages))]
        global_blocks = list(encoder["global_att_blocks"])
        windows = list(encoder["window_spec"])
        query_stride = list(encoder.get("q_stride", [2, 2]))
        query_pool = int(encoder.get("q_pool", 3))
        top_down = list(encoder["neck"].get("fpn_top_down_levels", [2, 3]))
        scalp = int(encoder.get("scalp", 1))
    else:
        known = HIERA_SIZES.get((embed_dim, tuple(stages)))
        if known is None:
            raise CheckpointError(
                f"SAM2 image encoder of embed dim {embed_dim} with stages {stages} is not one of SAM2's released sizes "
                "(tiny, small, base+, large); reasonseg cannot tell its head counts and windows"
            )
        heads, global_blocks, windows = known
        heads_per_stage = [heads * 2**i for i in range(len(stages))]
        query_stride, query_pool, top_down, scalp = [2, 2], 3, [2, 3], 1
    background = list(shapes[p + "image_encoder.trunk.pos_embed"][2:])
    neck_convs = sorted(
        {int(m.group(1)) for k in shapes if (m := re.match(re.escape(p) + r"image_encoder\.neck\.convs\.(\d+)\.", k))}
    )
    channel_list = [shapes[f"{p}image_encoder.neck.convs.{i}.conv.weight"][1] for i in neck_convs]
    d_model = shapes[f"{p}image_encoder.neck.convs.0.conv.weight"][0]
    if channel_list != dims[::-1]:
        raise CheckpointError(f"SAM2 neck channels {channel_list} do not match the trunk's stages {dims[::-1]}")
    feature_sizes = [[image_size // 4 // 2**i] * 2 for i in range(len(stages) - scalp)]
    backbone = Sam2HieraDetConfig(
        hidden_size=embed_dim,
        num_attention_heads=heads_per_stage[0],
        image_size=[image_size, image_size],
        patch_kernel_size=list(shapes[p + "image_encoder.trunk.patch_embed.proj.weight"][2:]),
        patch_stride=[4, 4],
        patch_padding=[3, 3],
        query_stride=query_stride,
        window_positional_embedding_background_size=background,
        num_query_pool_stages=query_pool,
        blocks_per_stage=stages,
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=heads_per_stage,
        window_size_per_stage=windows,
        global_attention_blocks=global_blocks,
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone.to_dict(),
        backbone_channel_list=channel_list,
        backbone_feature_sizes=feature_sizes,
        fpn_hidden_size=d_model,
        fpn_top_down_levels=top_down,
        num_feature_levels=len(stages) - scalp,
    )
    decoder_prefix = p + "sam_mask_decoder."
    transformer_layers = {
        int(m.group(1)) for k in shapes if (m := re.match(re.escape(decoder_prefix) + r"transformer\.layers\.(\d+)\.", k))
    }
    iou_layers = {
        int(m.group(1)) for k in shapes if (m := re.match(re.escape(decoder_prefix) + r"iou_prediction_head\.layers\.(\d+)\.", k))
    }
    mask_tokens = shapes[decoder_prefix + "mask_tokens.weight"][0]
    decoder = Sam2MaskDecoderConfig(
        hidden_size=d_model,
        mlp_dim=shapes[decoder_prefix + "transformer.layers.0.mlp.layers.0.weight"][0],
        num_hidden_layers=len(transformer_layers),
        num_attention_heads=decoder_heads,
        attention_downsample_rate=SAM2_ATTENTION_DOWNSAMPLE,
        num_multimask_outputs=mask_tokens - 1,
        iou_head_depth=len(iou_layers),
        iou_head_hidden_dim=shapes[decoder_prefix + "iou_prediction_head.layers.0.weight"][0],
    )
    prompt = Sam2PromptEncoderConfig(
        hidden_size=d_model,
        image_size=image_size,
        patch_size=16,
        mask_input_channels=shapes[p + "sam_prompt_encoder.mask_downscaling.3.weight"][0],
    )
    return Sam2Config(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict())


def sa2va_config(raw: dict, shapes: dict, seg_token_id: int | None):
    from ..modeling.sa2va import Sa2VAConfig

    text_config = text_config_from_sa2va(raw)
    if raw.get("use_backbone_lora") or raw.get("use_llm_lora"):
        raise UnsupportedError(
            "this Sa2VA checkpoint keeps unmerged LoRA adapters (use_backbone_lora/use_llm_lora); merge them first "
            "(Sa2VA's convert_to_hf does) and load the merged checkpoint"
        )
    return Sa2VAConfig(
        vision_config=vision_config_from_sa2va(raw).to_dict(),
        text_config=text_config.to_dict(),
        sam_config=sam2_config_from_tensors(shapes, raw.get("fixture_sam2_config")).to_dict(),
        downsample_ratio=float(raw.get("downsample_ratio", 0.5)),
        ps_version=raw.get("ps_version", "v2"),
        vision_feature_layer=int(raw.get("select_layer", -1)),
        seg_token_id=seg_token_id,
        template=str(raw.get("template", "qwen_chat")).replace("-", "_"),
        tie_word_embeddings=False,
    )


# ---------------------------------------------------------------------------------------------------- key names
SAM2_KEYS = RenameTable([
    ("image_encoder.trunk.patch_embed.proj.", "vision_encoder.backbone.patch_embed.projection."),
    ("image_encoder.trunk.{pos_embed|pos_embed_window}", "vision_encoder.backbone.{pos_embed|pos_embed_window}"),
    (r"image_encoder.trunk.blocks.{\d+}.norm{\d}.", r"vision_encoder.backbone.blocks.{\d+}.layer_norm{\d}."),
    (r"image_encoder.trunk.blocks.{\d+}.mlp.layers.0.", r"vision_encoder.backbone.blocks.{\d+}.mlp.proj_in."),
    (r"image_encoder.trunk.blocks.{\d+}.mlp.layers.1.", r"vision_encoder.backbone.blocks.{\d+}.mlp.proj_out."),
    (r"image_encoder.trunk.blocks.{\d+}.{attn\.qkv|attn\.proj|proj}.",
     r"vision_encoder.backbone.blocks.{\d+}.{attn\.qkv|attn\.proj|proj}."),
    (r"image_encoder.neck.convs.{\d+}.conv.", r"vision_encoder.neck.convs.{\d+}."),
    ("sam_prompt_encoder.{not_a_point_embed|no_mask_embed}.", "prompt_encoder.{not_a_point_embed|no_mask_embed}."),
    ("sam_prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("sam_prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("sam_prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("sam_prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("sam_prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    (r"sam_mask_decoder.transformer.{layers\.\d+\.\w+|final_attn_token_to_image}.out_proj.",
     r"mask_decoder.transformer.{layers\.\d+\.\w+|final_attn_token_to_image}.o_proj."),
    (r"sam_mask_decoder.transformer.{layers\.\d+\.\w+|final_attn_token_to_image}.{q_proj|k_proj|v_proj}.",
     r"mask_decoder.transformer.{layers\.\d+\.\w+|final_attn_token_to_image}.{q_proj|k_proj|v_proj}."),
    (r"sam_mask_decoder.transformer.layers.{\d+}.norm{\d}.", r"mask_decoder.transformer.layers.{\d+}.layer_norm{\d}."),
    (r"sam_mask_decoder.transformer.layers.{\d+}.mlp.layers.0.", r"mask_decoder.transformer.layers.{\d+}.mlp.proj_in."),
    (r"sam_mask_decoder.transformer.layers.{\d+}.mlp.layers.1.", r"mask_decoder.transformer.layers.{\d+}.mlp.proj_out."),
    ("sam_mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("sam_mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("sam_mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("sam_mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    ("sam_mask_decoder.{iou_token|mask_tokens|obj_score_token|conv_s0|conv_s1}.",
     "mask_decoder.{iou_token|mask_tokens|obj_score_token|conv_s0|conv_s1}."),
    ("no_mem_embed", "no_memory_embedding"),
])
INTERNVIT_KEYS = RenameTable([
    ("vision_model.embeddings.class_embedding", "vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.patch_embedding.", "vision_tower.embeddings.patch_embeddings.projection."),
    ("vision_model.embeddings.position_embedding", "vision_tower.embeddings.position_embeddings"),
    (r"vision_model.encoder.layers.{\d+}.attn.proj.", r"vision_tower.encoder.layer.{\d+}.attention.projection_layer."),
    (r"vision_model.encoder.layers.{\d+}.attn.{q_norm|k_norm}.", r"vision_tower.encoder.layer.{\d+}.attention.{q_norm|k_norm}."),
    (r"vision_model.encoder.layers.{\d+}.ls{\d}", r"vision_tower.encoder.layer.{\d+}.lambda_{\d}"),
    (r"vision_model.encoder.layers.{\d+}.mlp.{fc1|fc2}.", r"vision_tower.encoder.layer.{\d+}.mlp.{fc1|fc2}."),
    (r"vision_model.encoder.layers.{\d+}.norm1.", r"vision_tower.encoder.layer.{\d+}.layernorm_before."),
    (r"vision_model.encoder.layers.{\d+}.norm2.", r"vision_tower.encoder.layer.{\d+}.layernorm_after."),
    (r"mlp1.{\d+}.", r"multi_modal_projector.{\d+}."),
    (r"text_hidden_fcs.{\d+}.", r"seg_projection.layers.{\d+}."),
])
_MLP_PATTERN = re.compile(
    r"^sam_mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.(\d+)\.(\w+)$"
)
_QKV_PATTERN = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_POINT_PATTERN = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")


def sam2_key_to_native(key: str, depths: dict[str, int]) -> str | None:
    """An original SAM2 key (relative to ``sam2_model.``) -> ``Sam2Model`` key (without ``sam.``); None if unknown.

    depths: number of layers of the decoder's MLP heads (transformers names them proj_in, layers.i, proj_out)."""
    match = _MLP_PATTERN.match(key)
    if match:
        head, index, leaf = match.group(1), int(match.group(2)), match.group(3)
        depth = depths["iou_prediction_head" if head == "iou_prediction_head" else "default"]
        name = "proj_in" if index == 0 else ("proj_out" if index == depth - 1 else f"layers.{index - 1}")
        return f"mask_decoder.{head}.{name}.{leaf}"
    return SAM2_KEYS.to_native(key)


def convert_sa2va_state_dict(tensors, config, source_llm: str = "Qwen2ForCausalLM") -> dict[str, torch.Tensor]:
    """Original Sa2VA ``(key, tensor)`` pairs -> native state dict (no copies except the split fused qkv).

    source_llm: the checkpoint's LLM architecture (InternLM2 keys are mapped onto LLaMA's).
    Raises :class:`CheckpointError` on a key it does not know, so a foreign checkpoint never loads half-way."""
    from ..modeling.sa2va.internlm2 import internlm2_key_to_llama

    internlm2 = source_llm == "InternLM2ForCausalLM"
    depths = {"iou_prediction_head": config.sam_config.mask_decoder_config.iou_head_depth, "default": 3}
    native: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, tensor in tensors:
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key.startswith(SAM_PREFIX):
            local = key[len(SAM_PREFIX) :]
            if local.startswith(SAM2_VIDEO_ONLY):
                continue
            point = _POINT_PATTERN.match(local)
            if point:
                points[int(point.group(1))] = tensor
                continue
            if local == "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
                native["sam.shared_image_embedding.positional_embedding"] = tensor
                # transformers' Sam2Model keeps two separate (untied) copies of the random-Fourier matrix
                native["sam.prompt_encoder.shared_embedding.positional_embedding"] = tensor.clone()
                continue
            new_key = sam2_key_to_native(local, depths)
        elif key.startswith("language_model."):
            new_key = key
            if internlm2:
                for sub_key, sub_tensor in internlm2_key_to_llama(key, tensor, config.text_config):
                    native[sub_key] = sub_tensor
                continue
        else:
            qkv = _QKV_PATTERN.match(key)
            if qkv:
                layer, leaf = qkv.groups()
                parts = tensor.split(config.vision_config.hidden_size, dim=0)
                for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                    native[f"vision_tower.encoder.layer.{layer}.attention.{name}.{leaf}"] = part.clone()
                continue
            new_key = INTERNVIT_KEYS.to_native(key)
        if new_key is None:
            raise CheckpointError(f"unexpected tensor {key!r} in the Sa2VA checkpoint; is it a Sa2VA (InternVL) model?")
        native[new_key if not key.startswith(SAM_PREFIX) else "sam." + new_key] = tensor
    if points:
        native["sam.prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    return native


# ---------------------------------------------------------------------------------------------------- loading
# parts kept in float32 whatever the requested dtype (small, and where mask logits keep their precision)
FLOAT32_PREFIXES = ("sam.mask_decoder.", "sam.prompt_encoder.", "sam.shared_image_embedding.", "seg_projection.")


def tokenizer_adds_bos(tokenizer) -> bool:
    with_special = tokenizer.encode("a")
    plain = tokenizer.encode("a", add_special_tokens=False)
    bos = tokenizer.bos_token_id
    return bos is not None and len(with_special) > len(plain) and with_special[0] == bos


def sa2va_processor_for(directory: Path, raw: dict):
    from ..processing.sa2va import Sa2VAProcessor, Sa2VAProcessorSettings, load_sa2va_tokenizer

    tokenizer = load_sa2va_tokenizer(directory)
    settings = Sa2VAProcessorSettings(
        template=str(raw.get("template", "qwen_chat")).replace("-", "_"),
        system_message=str(raw.get("system_message", "") or ""),
        add_bos=tokenizer_adds_bos(tokenizer),
    )
    # Sa2VA's predict_forward hard-codes 448-px tiles, 1-12 tiles + thumbnail and a 1024-px SAM2 input
    return Sa2VAProcessor(tokenizer, settings)


def load_sa2va_checkpoint(directory: str | Path, dtype: torch.dtype = torch.float32):
    """Load an original Sa2VA checkpoint directory as a reasonseg :class:`Sa2VAForCausalLM` + processor.

    Tensors are memory-mapped shard by shard into a model built on the ``meta`` device and cast one at a time, so
    peak memory stays near one copy of the weights in ``dtype``; the mask decoder, prompt encoder and ``[SEG]``
    projection are kept in float32."""
    from ..modeling.sa2va import Sa2VAForCausalLM
    from .loading import read_config
    from .materialize import build_on_meta

    directory = Path(directory)
    raw = read_config(directory)
    sa2va_kind(raw)
    processor = sa2va_processor_for(directory, raw)
    config = sa2va_config(raw, tensor_shapes(directory), processor.seg_token_id)
    model = build_on_meta(Sa2VAForCausalLM, config)
    source_llm = ((raw.get("llm_config") or {}).get("architectures") or [""])[0]
    tensors = convert_sa2va_state_dict(iter_checkpoint_tensors(directory), config, source_llm)
    finish_meta_model(model, tensors, dtype, directory, "language_model.lm_head.weight",
                      "language_model.model.embed_tokens.weight")
    return model.eval(), processor


def finish_meta_model(model, tensors: dict[str, torch.Tensor], dtype: torch.dtype, directory: Path,
                      lm_head_key: str, embed_key: str) -> None:
    """Put a converted checkpoint's tensors into its meta-built model: an absent ``lm_head_key`` is the word
    embeddings (tied in the checkpoint), then :func:`assign_tensors`; the model remembers where it came from."""
    if lm_head_key not in tensors and embed_key in tensors:
        tensors[lm_head_key] = tensors[embed_key]
    assign_tensors(model, tensors, dtype)
    model.config._name_or_path = str(directory)


def assign_tensors(model, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Put ``tensors`` in place of the meta parameters, cast to ``dtype`` (float32 for :data:`FLOAT32_PREFIXES`)."""
    from .materialize import check_tensors_fit, rebuild_meta_buffers

    current = check_tensors_fit(model, tensors, "Sa2VA checkpoint")
    for key in list(tensors):
        value = tensors[key]
        if not value.is_floating_point():
            continue
        wanted = torch.float32 if key.startswith(FLOAT32_PREFIXES) else dtype
        if current[key].shape != value.shape:
            raise CheckpointError(f"Sa2VA tensor {key} has shape {tuple(value.shape)}, the model expects {tuple(current[key].shape)}")
        tensors[key] = value.to(wanted)
    model.load_state_dict(tensors, strict=False, assign=True)
    rebuild_meta_buffers(model)


def native_sa2va_classes():
    from ..modeling.sa2va import Sa2VAForCausalLM
    from ..processing.sa2va import Sa2VAProcessor

    return Sa2VAForCausalLM, Sa2VAProcessor


def convert_sa2va_checkpoint(source: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """``reasonseg convert --from-sa2va``: a native, self-contained reasonseg checkpoint (safetensors + processor).

    ``dtype`` defaults to the checkpoint's storage dtype; the mask decoder side stays float32 (as loaded)."""
    from .convert import save_native
    from .loading import read_config

    source = Path(source)
    if dtype is None:
        stored = read_config(source).get("torch_dtype") or "float32"
        dtype = getattr(torch, str(stored), torch.float32)
    if sa2va_kind(read_config(source)) == "sa2va_qwen":
        from .sa2va_qwen import load_sa2va_qwen_checkpoint

        model, processor = load_sa2va_qwen_checkpoint(source, dtype=dtype)
    else:
        model, processor = load_sa2va_checkpoint(source, dtype=dtype)
    return save_native(model, processor, out_dir)


def converted_sa2va_cache(directory: Path) -> Path:
    """Quantised or device-mapped loading goes through transformers' loader, which needs the native layout:
    convert once into a cache directory (kept for later loads)."""
    cache_root = Path.home() / ".cache" / "reasonseg" / "converted"
    resolved = directory.resolve()
    stamp = json.dumps([str(resolved), [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weight_files(resolved)]])
    import hashlib

    target = cache_root / f"{resolved.name}-sa2va-{hashlib.sha1(stamp.encode()).hexdigest()[:10]}"
    if not (target / "config.json").is_file():
        convert_sa2va_checkpoint(directory, target)
    return target


# ---------------------------------------------------------------------------------------------------- the other way
# (native -> Sa2VA layout: for tests and benchmarks that need original-layout checkpoints of any size)
_NATIVE_MLP = re.compile(
    r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.(proj_in|proj_out|layers\.\d+)\.(\w+)$"
)
_NATIVE_VIT_QKV = re.compile(r"^vision_tower\.encoder\.layer\.(\d+)\.attention\.(q_proj|k_proj|v_proj)\.(weight|bias)$")


def native_items_to_sa2va(items, config):
    """Native ``(key, tensor)`` pairs -> Sa2VA-layout pairs (fused InternViT qkv, SAM2's original names)."""
    depths = {"iou_prediction_head": config.sam_config.mask_decoder_config.iou_head_depth, "default": 3}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in items:
        qkv = _NATIVE_VIT_QKV.match(key)
        if qkv:
            layer, name, leaf = qkv.groups()
            group = pending.setdefault((layer, leaf), {})
            group[name] = tensor
            if len(group) == 3:
                fused = torch.cat([group["q_proj"], group["k_proj"], group["v_proj"]], dim=0)
                yield f"vision_model.encoder.layers.{layer}.attn.qkv.{leaf}", fused
                del pending[(layer, leaf)]
            continue
        if key.startswith("sam."):
            local = key[len("sam.") :]
            if local == "prompt_encoder.shared_embedding.positional_embedding":
                continue
            if local == "shared_image_embedding.positional_embedding":
                yield SAM_PREFIX + "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", tensor
                continue
            if local == "prompt_encoder.point_embed.weight":
                for index in range(tensor.shape[0]):
                    yield f"{SAM_PREFIX}sam_prompt_encoder.point_embeddings.{index}.weight", tensor[index : index + 1].clone()
                continue
            mlp = _NATIVE_MLP.match(local)
            if mlp:
                head, name, leaf = mlp.groups()
                depth = depths["iou_prediction_head" if head == "iou_prediction_head" else "default"]
                index = 0 if name == "proj_in" else (depth - 1 if name == "proj_out" else int(name.split(".")[1]) + 1)
                yield f"{SAM_PREFIX}sam_mask_decoder.{head}.layers.{index}.{leaf}", tensor
                continue
            original = SAM2_KEYS.to_original(local)
            if original is None:
                raise CheckpointError(f"no Sa2VA name for {key}")
            yield SAM_PREFIX + original, tensor
            continue
        original = key if key.startswith("language_model.") else INTERNVIT_KEYS.to_original(key)
        if original is None:
            raise CheckpointError(f"no Sa2VA name for {key}")
        yield original, tensor


def sa2va_config_dict(config, sam2_hints: dict | None = None) -> dict:
    """A Sa2VA ``config.json`` for a native config (``sam2_hints``: head counts and windows of a SAM2 that is not
    one of SAM2's released sizes, in the fixture's ``fixture_sam2_config`` form)."""
    vision = config.vision_config
    image_size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
    patch_size = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
    llm = config.text_config.to_dict()
    llm["architectures"] = [type_name_for(config.text_config)]
    out = {
        "architectures": ["Sa2VAChatModel"],
        "model_type": SA2VA_MODEL_TYPE,
        "llm_config": llm,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "hidden_act": vision.hidden_act,
            "norm_type": vision.norm_type,
            "layer_norm_eps": vision.layer_norm_eps,
            "image_size": image_size,
            "patch_size": patch_size,
            "qkv_bias": vision.attention_bias,
            "qk_normalization": vision.use_qk_norm,
            "initializer_factor": vision.layer_scale_init_value,
        },
        "downsample_ratio": config.downsample_ratio,
        "ps_version": config.ps_version,
        "select_layer": config.vision_feature_layer,
        "template": config.template,
        "force_image_size": image_size,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "torch_dtype": "bfloat16",
    }
    if sam2_hints:
        out["fixture_sam2_config"] = sam2_hints
    return out


def type_name_for(text_config) -> str:
    return {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM"}.get(
        text_config.model_type, (text_config.architectures or ["Qwen2ForCausalLM"])[0]
    )


def save_sa2va_layout(items, config, tokenizer, directory: str | Path, sam2_hints: dict | None = None,
                      shard_bytes: int = 2 * 1024**3) -> Path:
    """Write native ``(key, tensor)`` items as an original-layout Sa2VA checkpoint (sharded safetensors, index,
    config.json, tokenizer), holding at most one shard in memory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    size, index, weight_map = 0, 0, {}

    def flush():
        nonlocal shard, size, index
        if not shard:
            return
        index += 1
        name = f"model-{index:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in shard.items()}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for key, tensor in native_items_to_sa2va(items, config):
        shard[key] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= shard_bytes:
            flush()
    flush()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(sa2va_config_dict(config, sam2_hints), indent=2))
    tokenizer.save_pretrained(str(directory))
    return directory
