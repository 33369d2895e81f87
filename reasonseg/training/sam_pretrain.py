"""Stage 1 of the demo model: pre-train a small SAM on the shapes world with point and box prompts, as SAM was.

The result is a transformers-format SAM directory (``SamModel.save_pretrained``) that ``reasonseg build --sam`` takes
like ``facebook/sam-vit-huge``. Samples are drawn from the world's train split by index, so a step's batch depends
only on ``(seed, step)``; checkpoints and resume use the reasoning-segmentation trainer's atomic format.

    reasonseg pretrain sam --config configs/demo/toy_sam.yaml [key=value ...] [--resume]
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from ..data.toy_world import generate_scene, phase_train_index, split_seed
from ..data.toy_world.sample import PHASE_SCENE_STRIDE
from ..data.toy_world.scene import NEIGHBOUR_REACH, beside_look_alikes
from ..checkpoints.loading import read_sam_config
from ..errors import CheckpointError, InputError
from ..modeling.losses import mask_bce, mask_dice
from ..modeling.sam import build_sam_model, upscale_mask_logits
from ..processing.sam_transform import SamTransform
from .precision import check_precision
from .stage_config import build_flat_dataclass, read_config_dict
from .trainer import (
    checkpoint_to_resume,
    load_checkpoint,
    load_init_weights,
    new_accelerator,
    save_checkpoint,
    warmup_then_linear_decay,
)

FINAL_MODEL_DIR = "model"
# look-alike images (lookalike_rate) come from their own stretch of a run's train scenes, LOOKALIKE_SCAN per image
LOOKALIKE_START = 500_000
LOOKALIKE_SCAN = 16
LOOKALIKE_IMAGES = (PHASE_SCENE_STRIDE - LOOKALIKE_START) // LOOKALIKE_SCAN  # images a phase may draw with look-alikes


@dataclass
class SamPretrainConfig:
    output_dir: str = "runs/toy_sam"
    # the SAM's shape: ViT image encoder, then prompt encoder and mask decoder of width `embed_dim`
    image_size: int = 256
    patch_size: int = 8
    encoder_width: int = 128
    encoder_depth: int = 4
    encoder_heads: int = 4
    window_size: int = 8
    global_attn_indexes: list[int] = field(default_factory=lambda: [1, 3])
    embed_dim: int = 128
    decoder_mlp_dim: int = 512
    decoder_heads: int = 4
    # the mask decoder's cross-attention starts positional: its query and key projections begin as one shared
    # orthonormal projection times this gain, so a prompt attends to the image around it from the first step
    # (0: transformers' random init). Without it a SAM trained from scratch outlines every object whatever the prompt.
    positional_attention_gain: float = 5.0
    # optimisation
    steps: int = 2000
    batch_size: int = 8
    prompts_per_image: int = 4
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    precision: str = "fp32"  # auto | fp32 | bf16 (autocast; auto: bf16 where native, see training/precision.py)
    # prompts: boxes for a share of the steps, else one point: the object's innermost pixel or a random one of it
    box_rate: float = 0.5
    random_point_rate: float = 0.5
    # share of a batch's images that are scenes holding shapes beside a same-coloured look-alike
    # (toy_world.scene.beside_look_alikes); their prompts ask for those shapes only
    lookalike_rate: float = 0.0
    # how near the look-alike must be, as a fraction of the image's shorter side (0: touching, i.e. within a pixel)
    lookalike_reach: float = NEIGHBOUR_REACH
    # False: the prompt encoder and mask decoder stay as loaded and only the image encoder learns, e.g. for the SAM
    # inside a stage-3 model, whose [SEG] prompts were trained against that decoder
    train_prompt_side: bool = True
    save_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    val_every: int = 500
    val_scenes: int = 32
    seed: int = 0
    threads: int = 0  # torch CPU threads (0: torch's default)
    init_from: str = ""  # a later phase: an earlier run's model or checkpoint folder (fresh optimizer and schedule)
    # a new image encoder (e.g. wider) for a trained toy SAM: its prompt encoder and mask decoder start this run, the
    # encoder starts fresh and learns to feed them (a cold start of a wider encoder learns far slower, session 20)
    init_decoder_from: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def mask_size(self) -> int:
        return 4 * self.image_size // self.patch_size


def load_sam_pretrain_config(path, overrides: list[str] = ()) -> SamPretrainConfig:
    config = build_flat_dataclass(SamPretrainConfig, read_config_dict(path, overrides), "toy SAM config")
    if config.image_size % config.patch_size:
        raise InputError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
    check_precision(config.precision, ("fp32", "bf16"), "toy SAM config")
    if not 0.0 <= config.lookalike_rate <= 1.0:
        raise InputError(f"lookalike_rate {config.lookalike_rate} is not a share; give a number from 0 to 1")
    if not 0.0 <= config.lookalike_reach <= 0.5:
        raise InputError(f"lookalike_reach {config.lookalike_reach} should be a fraction of the shorter image side "
                         "from 0 (touching) to 0.5")
    images = config.steps * config.batch_size
    if config.lookalike_rate and images > LOOKALIKE_IMAGES:
        raise InputError(f"lookalike_rate reads {LOOKALIKE_SCAN} scenes per image from train position "
                         f"{LOOKALIKE_START:,} of seed {config.seed}'s stretch, which holds {LOOKALIKE_IMAGES:,} images "
                         f"before seed {config.seed + 1}'s scenes; steps x batch_size is {images:,}: run at most "
                         f"{LOOKALIKE_IMAGES // config.batch_size:,} steps per phase (the next phase with another seed)")
    if not config.train_prompt_side and not (config.init_from or config.init_decoder_from):
        raise InputError("train_prompt_side=false keeps an untrained prompt encoder and mask decoder; give init_from "
                         "(or init_decoder_from) a trained toy SAM, or leave train_prompt_side on")
    if max(config.global_attn_indexes, default=-1) >= config.encoder_depth:
        raise InputError(f"global_attn_indexes {config.global_attn_indexes} name blocks beyond encoder_depth {config.encoder_depth}")
    if config.init_from and config.init_decoder_from:
        raise InputError("init_from and init_decoder_from both set: init_from continues a whole toy SAM, "
                         "init_decoder_from only its prompt encoder and mask decoder; keep one")
    return config


def build_sam(config: SamPretrainConfig) -> SamModel:
    grid = config.image_size // config.patch_size
    vision = SamVisionConfig(
        hidden_size=config.encoder_width,
        output_channels=config.embed_dim,
        num_hidden_layers=config.encoder_depth,
        num_attention_heads=config.encoder_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        window_size=config.window_size,
        global_attn_indexes=list(config.global_attn_indexes),
        mlp_dim=4 * config.encoder_width,
        num_pos_feats=config.embed_dim // 2,
        initializer_range=0.02,  # SAM's default (1e-10) is meant for loading weights, not for training
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=config.embed_dim, image_size=config.image_size, patch_size=config.patch_size,
        image_embedding_size=grid,
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=config.embed_dim, mlp_dim=config.decoder_mlp_dim, num_attention_heads=config.decoder_heads,
        iou_head_hidden_dim=config.embed_dim,
    )
    sam_config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder,
                           initializer_range=0.02)
    torch.manual_seed(config.seed)
    model = build_sam_model(sam_config)
    _init_like_segment_anything(model)
    if config.positional_attention_gain:
        _start_cross_attention_positional(model, config.positional_attention_gain)
    return model


def load_prompt_side(folder: Path, model: SamModel) -> None:
    """Copy everything but the image encoder (prompt encoder, mask decoder, the shared positional embedding) of the
    toy SAM saved in ``folder`` into ``model``."""
    hint = f"give a toy SAM run's model folder, e.g. <output_dir>/{FINAL_MODEL_DIR}"
    try:
        read_sam_config(folder)
    except CheckpointError as err:
        raise InputError(f"init_decoder_from: {err}; {hint}") from None
    source = SamModel.from_pretrained(folder).state_dict()
    target = model.state_dict()
    wanted = [name for name in target if not name.startswith("vision_encoder.")]
    for name in wanted:
        if name not in source or source[name].shape != target[name].shape:
            raise InputError(f"init_decoder_from {folder} has no {name} of this config's size; "
                             f"set embed_dim, decoder_mlp_dim and decoder_heads as it was trained with")
    model.load_state_dict({name: source[name] for name in wanted}, strict=False)


def _init_like_segment_anything(model: SamModel) -> None:
    """segment-anything's initialisation: PyTorch's layer defaults (N(0, 1) for the prompt and output-token
    embeddings, where transformers uses std 0.02, which leaves the prompt tokens too faint to steer the decoder), and
    the random Fourier positional matrix kept fixed, as segment-anything keeps it in a buffer."""
    for module in model.modules():
        if module is not model.shared_image_embedding and not list(module.children()) and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.shared_image_embedding.positional_embedding.requires_grad_(False)


def _start_cross_attention_positional(model: SamModel, gain: float) -> None:
    for name, module in model.mask_decoder.named_modules():
        if ("cross_attn" in name or name.endswith("final_attn_token_to_image")) and hasattr(module, "q_proj"):
            inner, width = module.q_proj.weight.shape
            projection = torch.linalg.qr(torch.randn(width, inner))[0].T  # [inner, width], orthonormal rows
            with torch.no_grad():
                for linear in (module.q_proj, module.k_proj):
                    linear.weight.copy_(gain * projection)
                    linear.bias.zero_()


@dataclass
class PromptBatch:
    pixel_values: torch.Tensor  # [B, 3, S, S]
    points: torch.Tensor  # [B, K, 1, 2] in the resized frame
    boxes: torch.Tensor  # [B, K, 4]
    targets: torch.Tensor  # [B, K, S, S] float 0/1 in the padded frame


def padded_mask(mask: np.ndarray, resized: tuple[int, int], size: int) -> np.ndarray:
    """A bool mask at the original size -> float 0/1 ``[size, size]`` in SAM's resized, bottom-right-padded frame."""
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((resized[1], resized[0]), Image.NEAREST)
    out = np.zeros((size, size), dtype=np.float32)
    out[: resized[0], : resized[1]] = np.asarray(small) > 127
    return out


def lookalike_scene(config: SamPretrainConfig, index: int):
    """The look-alike scene of image ``index``: the first of its own run of ``LOOKALIKE_SCAN`` train scenes (read from
    ``LOOKALIKE_START`` on, apart from the plain images' scenes) with shapes beside a same-coloured look-alike, and
    those shapes; ``None`` when none of the run has any."""
    for offset in range(LOOKALIKE_SCAN):
        position = LOOKALIKE_START + index * LOOKALIKE_SCAN + offset
        scene = generate_scene(split_seed("train", phase_train_index(config.seed, position)))
        beside = beside_look_alikes(scene, reach=config.lookalike_reach)
        if beside:
            return scene, beside
    return None


def draw_prompt_batch(config: SamPretrainConfig, step: int, transform: SamTransform) -> PromptBatch:
    """The batch of ``step``: the run's scenes ``step * batch_size + row`` of the train split (where its ``seed``
    starts them: ``phase_train_index``), ``prompts_per_image`` objects each (drawn with replacement so every image
    brings the same number); a ``lookalike_rate`` share of the images are look-alike scenes instead
    (``lookalike_scene``), prompted on their shapes beside a look-alike."""
    pixels, points, boxes, targets = [], [], [], []
    for row in range(config.batch_size):
        index = step * config.batch_size + row
        rng = np.random.default_rng([config.seed, index])
        found = lookalike_scene(config, index) if config.lookalike_rate and rng.random() < config.lookalike_rate else None
        if found is None:
            scene = generate_scene(split_seed("train", phase_train_index(config.seed, index)))
            candidates = np.arange(len(scene.objects))
        else:
            scene, candidates = found[0], np.array(found[1])
        image = Image.fromarray(scene.image)
        pixel_values, resized = transform(image)
        scale = resized[0] / scene.height
        chosen = candidates[rng.integers(0, len(candidates), size=config.prompts_per_image)]
        row_points, row_boxes, row_targets = [], [], []
        for object_index in chosen:
            obj = scene.objects[int(object_index)]
            mask = obj.mask
            if rng.random() < config.random_point_rate:
                ys, xs = np.nonzero(mask)
                pick = rng.integers(0, len(xs))
                point = (float(xs[pick]), float(ys[pick]))
            else:
                point = (float(obj.point[0]), float(obj.point[1]))
            row_points.append([[point[0] * scale, point[1] * scale]])
            row_boxes.append([v * scale for v in obj.box])
            row_targets.append(padded_mask(mask, resized, config.image_size))
        pixels.append(pixel_values)
        points.append(row_points)
        boxes.append(row_boxes)
        targets.append(np.stack(row_targets))
    return PromptBatch(
        torch.stack(pixels),
        torch.tensor(points, dtype=torch.float32),
        torch.tensor(boxes, dtype=torch.float32),
        torch.from_numpy(np.stack(targets)),
    )


def prompt_losses(model: SamModel, batch: PromptBatch, use_boxes: bool) -> dict[str, torch.Tensor]:
    prompts = {"input_boxes": batch.boxes} if use_boxes else {
        "input_points": batch.points, "input_labels": torch.ones(batch.points.shape[:3], dtype=torch.long)
    }
    out = model(pixel_values=batch.pixel_values, multimask_output=False, **prompts)
    size = batch.targets.shape[-1]
    low = out.pred_masks[:, :, 0].float()  # [B, K, m, m]
    logits = F.interpolate(low, (size, size), mode="bilinear", align_corners=False).flatten(0, 1)
    targets = batch.targets.flatten(0, 1)
    bce = mask_bce(logits, targets).mean()
    dice = mask_dice(logits, targets).mean()
    with torch.no_grad():
        predicted = logits > 0
        inter = (predicted & (targets > 0)).flatten(1).sum(-1).float()
        union = (predicted | (targets > 0)).flatten(1).sum(-1).float()
        iou = inter / union.clamp(min=1)
    iou_loss = F.mse_loss(out.iou_scores[:, :, 0].float().flatten(), iou)
    return {"loss": bce + dice + iou_loss, "bce": bce, "dice": dice, "iou_loss": iou_loss, "iou": iou.mean()}


@torch.no_grad()
def prompted_object_ious(model: SamModel, image_size: int, num_scenes: int, split: str = "val"):
    """Yield ``(scene, object, prompt kind, IoU)`` for every object of ``num_scenes`` scenes of ``split``, prompted by
    its innermost point and by its box; IoU at the original image size."""
    transform = SamTransform(image_size)
    was_training = model.training
    model.eval()
    try:  # also when the caller stops reading early
        for index in range(num_scenes):
            scene = generate_scene(split_seed(split, index))
            pixel_values, resized = transform(Image.fromarray(scene.image))
            scale = resized[0] / scene.height
            points = torch.tensor([[[[o.point[0] * scale, o.point[1] * scale]] for o in scene.objects]])
            boxes = torch.tensor([[[v * scale for v in o.box] for o in scene.objects]])
            embedding = model.get_image_embeddings(pixel_values[None])
            for kind, prompts in (
                ("point", {"input_points": points, "input_labels": torch.ones(points.shape[:3], dtype=torch.long)}),
                ("box", {"input_boxes": boxes}),
            ):
                out = model(image_embeddings=embedding, multimask_output=False, **prompts)
                logits = upscale_mask_logits(out.pred_masks[0, :, 0], resized, (scene.height, scene.width), image_size)
                for obj, predicted in zip(scene.objects, (logits > 0).numpy()):
                    truth = obj.mask
                    union = np.logical_or(predicted, truth).sum()
                    yield scene, obj, kind, float(np.logical_and(predicted, truth).sum() / union) if union else 1.0
    finally:
        model.train(was_training)


def evaluate_sam(model: SamModel, config: SamPretrainConfig, num_scenes: int, split: str = "val") -> dict[str, float]:
    """Mean IoU at the original image size of every object of ``num_scenes`` scenes, prompted by its innermost
    point and by its box."""
    ious = {"point": [], "box": []}
    for _, _, kind, iou in prompted_object_ious(model, config.image_size, num_scenes, split):
        ious[kind].append(iou)
    return {f"{kind}_miou": float(np.mean(values)) for kind, values in ious.items()}


def pretrain_sam(config: SamPretrainConfig, resume: bool = False, stop_after: int | None = None,
                 progress: bool = True) -> Path:
    """Train, checkpoint every ``save_every`` steps, validate every ``val_every``; returns the final model dir."""
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    output_dir = Path(config.output_dir)
    accelerator = new_accelerator(config.precision, cpu=not torch.cuda.is_available())
    model = build_sam(config)
    if not config.train_prompt_side:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(parameter.requires_grad and name.startswith("vision_encoder."))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(config.warmup_steps, config.steps))
    checkpoint = checkpoint_to_resume(output_dir, resume)
    # the start weights first, also on resume: a checkpoint holds only what learns, so what stays frozen (the Fourier
    # matrix; with train_prompt_side off, the prompt side) must come from them again
    if config.init_from:
        load_init_weights(Path(config.init_from), model, SamModel, "toy SAM")
    elif config.init_decoder_from:
        load_prompt_side(Path(config.init_decoder_from), model)
    start = load_checkpoint(checkpoint, model, optimizer, scheduler) if checkpoint is not None else 0
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(json.dumps(config.to_dict(), indent=2))
    model, optimizer = accelerator.prepare(model, optimizer)
    transform = SamTransform(config.image_size)
    log_path = output_dir / "log.jsonl"
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(range(start, end), initial=start, total=config.steps, disable=not progress, desc="toy SAM")
    began = time.time()
    model.train()
    for step in bar:
        batch = draw_prompt_batch(config, step, transform)
        batch = PromptBatch(*(t.to(accelerator.device) for t in vars(batch).values()))
        use_boxes = np.random.default_rng([config.seed, step, 7]).random() < config.box_rate
        with accelerator.autocast():
            losses = prompt_losses(model, batch, use_boxes)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        record = {"step": done, "lr": scheduler.get_last_lr()[0], "prompt": "box" if use_boxes else "point",
                  **{k: round(float(v.detach()), 5) for k, v in losses.items()}}
        bar.set_postfix(loss=f"{record['loss']:.3f}", iou=f"{record['iou']:.3f}")
        if config.val_every and done % config.val_every == 0 or done == config.steps:
            record.update(evaluate_sam(accelerator.unwrap_model(model), config, config.val_scenes))
        if done % config.log_every == 0 or "point_miou" in record:
            record["elapsed_s"] = round(time.time() - began, 1)
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if done % config.save_every == 0 or done == end:
            save_checkpoint(output_dir, done, accelerator.unwrap_model(model), optimizer, scheduler, config)
    final = output_dir / FINAL_MODEL_DIR
    if end == config.steps:
        accelerator.unwrap_model(model).save_pretrained(final)
    return final
