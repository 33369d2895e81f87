"""Stage 2 of the demo model: a small LLaVA (CLIP tower + MLP projector + LLaMA) trained on the shapes world's
question answering and captions, as LLaVA is trained on instruction data.

The result is a transformers ``LlavaForConditionalGeneration`` directory with its tokenizer and CLIP image
processor (the llava-hf layout), which ``reasonseg build --vlm`` takes like ``llava-hf/llava-1.5-7b-hf``.
Everything is trained (a toy model has no pre-trained parts to protect). The tokenizer is a byte-level BPE learned
from the world's own text, so the whole vocabulary of the world costs few tokens.

    reasonseg pretrain vlm --config configs/demo/toy_llava.yaml [key=value ...] [--resume]
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from ..checkpoints.build import STAGE_INFO_NAME
from ..data.templates import question_for
from ..data.toy_world import generate_sample, generate_scene, phase_train_index, sample_from_scene, split_seed
from ..data.toy_world.sample import SPLIT_SIZE
from ..data.toy_world.scene import MAX_OBJECTS
from ..data.toy_world.vocab import COLOUR_NAMES, SHAPES
from ..data.toy_world.queries import GROUNDING_GRID, check_query_kinds, focus_queries, grid_cell
from ..data.toy_world.turns import (
    REGION_QUESTIONS,
    objects_alone_in_their_cell,
    list_queries,
    list_turn,
    referring_queries,
    referring_question,
    referring_turn,
    region_turn,
)
from ..errors import InputError
from ..modeling.image_attention import check_image_attention, decoder_attention_mask
from ..processing.conversation import DEFAULT_IMAGE_TOKEN, check_image_placement, get_template, place_image
from ..processing.tokenization import train_byte_level_bpe
from .collate import IGNORE_INDEX, pad_right
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


@dataclass
class VlmPretrainConfig:
    output_dir: str = "runs/toy_llava"
    conv_type: str = "llava_v1"
    vocab_size: int = 1024
    tokenizer_scenes: int = 2000  # train-split scenes whose text teaches the tokenizer
    image_size: int = 128  # the CLIP input is the whole image squashed to a square (no centre crop)
    patch_size: int = 16
    vision_width: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    # "sincos": the tower's position embeddings start as 2-D sine-cosine codes about as large as the patch embeddings
    # (as in a pre-trained ViT); "random": transformers' default (std 0.02, 50x weaker than the patches, so the
    # tower learns to ignore where a patch is and the LM can never say where an object is)
    position_init: str = "random"
    text_width: int = 256
    text_depth: int = 4
    # a deeper LM from a shallower init_from: each listed layer of init_from's LM is followed by a copy of itself
    # whose attention and MLP output projections start at zero, so the new layer adds nothing to the residual stream
    # and the deeper LM starts as the same function; text_depth must be init_from's depth plus their number
    repeat_text_layers: list[int] = field(default_factory=list)
    text_heads: int = 4
    text_intermediate: int = 704
    max_length: int = 320
    steps: int = 3000
    batch_size: int = 8
    turns_per_image: int = 3  # question-answer turns per conversation
    referring_rate: float = 0.5  # share of turns that ask which object a segmentation query means
    # a curriculum phase may train on scenes with few objects only (the world draws 1 to 6): with one object,
    # "where is it" needs no search, so the LM first learns to read a place out of the image tokens
    max_objects: int = MAX_OBJECTS
    # share of turns asking what is at a grid cell ("What is at (3, 6)?" -> "It is the small red star."): the
    # reverse of a referring turn (as Shikra pairs REC with REG): the LM looks a patch up by its place and must read
    # what lies there, so the tower's patches are pushed to say it, which is what a referring turn searches
    region_rate: float = 0.0
    # share of referring turns that ask about an object the scene lacks (the world's no-target query, answered "There
    # is no green heart in this image."); with target_patch_weight, no image token may mark itself for such a turn
    absent_rate: float = 0.0
    # share of the other referring turns that ask about several objects at once ("Segment all the stars." -> "They
    # are the small red star at (3, 6) and the large blue star at (5, 2)."), as stage 3's several-target answers
    # name each target before its [SEG]; with target_patch_weight, every target's patches mark themselves
    list_rate: float = 0.0
    # query kinds that few scenes offer (the only shape of its colour, the closest one to ...) and the share of
    # referring turns that ask one of them whenever the scene offers one: the world draws a family's kind evenly
    # among those its scene offers, so such a kind is 1-2 % of the referring turns (session 21: their answers name
    # the target a third as often as the common kinds'); ``focus_queries`` asks them on purpose
    focus_kinds: list[str] = field(default_factory=list)
    focus_rate: float = 0.0
    # weight of an auxiliary loss on the image tokens the LM receives: a linear head must read, for each patch, the
    # colour and shape of the object under the patch's centre (or background), as a supervised pre-training makes a
    # vision tower's patches say what they show. The head is dropped from the saved model.
    patch_label_weight: float = 0.0
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    val_every: int = 250
    val_scenes: int = 32
    seed: int = 0
    threads: int = 0
    # a new phase starts from an earlier run's weights and tokenizer (its `model` folder or a checkpoint-<step>
    # folder) with a fresh optimizer and learning-rate schedule, as LLaVA's second stage starts from its first
    init_from: str = ""
    # where the first user turn puts the image: "before_text" (LLaVA's "<image>\n{question}") or "after_text"
    # ("{question}\n<image>"): with the question first, each image token can attend to it and mark itself as the
    # target, so the answer looks up a marked token instead of searching the image by the question's words
    image_placement: str = "before_text"
    # weight of an auxiliary loss that needs image_placement "after_text": when the first turn is a referring turn, a
    # linear head must tell, from the LM's hidden state of each image token after `target_patch_layer` layers, whether
    # the patch lies on the queried object. It teaches the image tokens to mark themselves as the target, so that the
    # answer only has to find the marked tokens (as with a one-object scene). The head is dropped from the saved model.
    target_patch_weight: float = 0.0
    target_patch_layer: int = 2
    # "bidirectional": the image tokens see each other both ways (modeling/image_attention.py), so a patch early in
    # reading order can tell whether a larger or further-left object comes later; the built model inherits it
    image_attention: str = "causal"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def load_vlm_pretrain_config(path, overrides: list[str] = ()) -> VlmPretrainConfig:
    config = build_flat_dataclass(VlmPretrainConfig, read_config_dict(path, overrides), "toy LLaVA config")
    get_template(config.conv_type)
    if config.image_size % config.patch_size:
        raise InputError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
    check_precision(config.precision, ("fp32", "bf16"), "toy LLaVA config")
    if not 0 <= config.referring_rate + config.region_rate <= 1 or min(config.referring_rate, config.region_rate) < 0:
        raise InputError(f"referring_rate {config.referring_rate} and region_rate {config.region_rate} must be >= 0 "
                         "and add up to at most 1 (the rest of the turns are the world's question answering)")
    if not 0 <= config.absent_rate <= 1:
        raise InputError(f"absent_rate {config.absent_rate} must be between 0 and 1 (a share of the referring turns)")
    if not 0 <= config.list_rate <= 1:
        raise InputError(f"list_rate {config.list_rate} must be between 0 and 1 (a share of the referring turns)")
    if not 0 <= config.focus_rate <= 1:
        raise InputError(f"focus_rate {config.focus_rate} must be between 0 and 1 (a share of the referring turns)")
    if config.focus_rate and not config.focus_kinds:
        raise InputError("focus_rate needs focus_kinds: the query kinds to ask more often, e.g. "
                         "'focus_kinds=[only_of_kind,only_of_colour,closest]'")
    check_query_kinds(config.focus_kinds)
    if not 1 <= config.max_objects <= MAX_OBJECTS:
        raise InputError(f"max_objects {config.max_objects}: the world draws 1 to {MAX_OBJECTS} objects per scene")
    check_image_placement(config.image_placement)
    check_image_attention(config.image_attention)
    if config.target_patch_weight and config.image_placement != "after_text":
        raise InputError("target_patch_weight needs image_placement=after_text: an image token that comes before the "
                         "question cannot know which object is asked for")
    if not 1 <= config.target_patch_layer <= config.text_depth:
        raise InputError(f"target_patch_layer {config.target_patch_layer}: use 1 to text_depth ({config.text_depth})")
    if config.repeat_text_layers:
        repeated = config.repeat_text_layers
        saved_depth = config.text_depth - len(repeated)
        if not config.init_from:
            raise InputError("repeat_text_layers needs init_from: it deepens an earlier run's LM")
        if sorted(set(repeated)) != list(repeated) or not all(0 <= index < saved_depth for index in repeated):
            raise InputError(f"repeat_text_layers {repeated} with text_depth {config.text_depth}: init_from's LM must "
                             f"then have {saved_depth} layers, so give layers 0 to {saved_depth - 1} in increasing "
                             f"order, each once, and set text_depth to init_from's depth plus {len(repeated)}")
    if config.position_init not in ("random", "sincos"):
        raise InputError(f"position_init {config.position_init!r}: use random or sincos")
    return config


def scene_turns(sample, rng: np.random.Generator, config: VlmPretrainConfig) -> list[tuple[str, str]]:
    """Question-answer turns about one scene: the world's QA pairs and caption, and referring turns that ask which
    object a segmentation query means and where it is ("the shape that could roll" -> "It is the blue circle at
    (3, 5).", the cell of the answers' grounding grid: it makes the tower keep where each patch is)."""
    return scene_turns_and_targets(sample, rng, config)[0]


def scene_turns_and_targets(sample, rng: np.random.Generator, config: VlmPretrainConfig):
    """:func:`scene_turns`, and for each turn the object a referring turn asks about (a tuple of objects for a list
    turn, ``ABSENT`` when it asks about an object the scene lacks, ``None`` for other turns)."""
    turns, targets = [], []
    referring = referring_queries(sample)
    several = list_queries(sample)
    absent = [q for q in sample.queries if q.family == "no_target"]
    placed = objects_alone_in_their_cell(sample)
    focus = focus_queries(sample.scene, sample.seed, config.focus_kinds) if config.focus_rate else []
    for _ in range(config.turns_per_image):
        draw = rng.random()
        target = None
        # absent_rate 0 draws nothing more, so earlier recipes keep their exact turns
        if absent and draw < config.referring_rate and config.absent_rate and rng.random() < config.absent_rate:
            turns.append((referring_question(absent[0]), absent[0].answer))
            target = ABSENT
        # list_rate 0 draws nothing more either
        elif several and draw < config.referring_rate and config.list_rate and rng.random() < config.list_rate:
            query = several[int(rng.integers(len(several)))]
            turns.append(list_turn(sample, query))
            target = tuple(sample.objects[index] for index in query.targets)
        elif referring and draw < config.referring_rate:
            # with no focus kind in the scene (or focus_rate 0) nothing more is drawn: earlier recipes keep their turns
            pool = focus if focus and rng.random() < config.focus_rate else referring
            query = pool[int(rng.integers(len(pool)))]
            turns.append(referring_turn(sample, query))
            target = sample.objects[query.targets[0]]
        elif placed and draw < config.referring_rate + config.region_rate:
            cell, obj = placed[int(rng.integers(len(placed)))]
            turns.append(region_turn(cell, obj, REGION_QUESTIONS[int(rng.integers(len(REGION_QUESTIONS)))]))
        else:
            pair = sample.qa[int(rng.integers(len(sample.qa)))]
            turns.append((pair.question, pair.answer))
        targets.append(target)
    return turns, targets


ABSENT = "absent"  # the target of a referring turn about an object the scene lacks


def _init_tokenizer_dir(init_from: Path) -> Path:
    """The tokenizer of an earlier run: inside its ``model`` folder, or beside its ``checkpoint-<step>`` folder."""
    for folder in (init_from, init_from.parent / "tokenizer"):
        if (folder / "tokenizer.json").is_file():
            return folder
    raise InputError(f"init_from {init_from}: no tokenizer.json in it or in ../tokenizer; give a toy LLaVA run's "
                     "`model` folder or one of its checkpoint-<step> folders")


def world_corpus(num_scenes: int) -> list[str]:
    texts = []
    for index in range(num_scenes):
        sample = generate_sample(split_seed("train", index))
        texts.append(sample.caption)
        texts.extend(f"{p.question} {p.answer}" for p in sample.qa)
        texts.extend(f"{q.text} {q.answer} {' '.join(q.alternatives)} {q.reason or ''}" for q in sample.queries)
    texts.extend(question_for("the red circle", bool(i % 2), random.Random(i)) for i in range(200))
    return texts


def build_world_tokenizer(config: VlmPretrainConfig) -> PreTrainedTokenizerFast:
    template = get_template(config.conv_type)
    corpus = world_corpus(config.tokenizer_scenes) + [template.system] * 50
    backend = train_byte_level_bpe(corpus, config.vocab_size, ["<unk>", "<s>", "</s>", DEFAULT_IMAGE_TOKEN], "<unk>")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>",
        model_max_length=config.max_length,
    )


def build_llava(config: VlmPretrainConfig, tokenizer) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
        num_hidden_layers=config.vision_depth, num_attention_heads=config.vision_heads,
        image_size=config.image_size, patch_size=config.patch_size, projection_dim=config.vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_depth, num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads, max_position_embeddings=config.max_length + 64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    llava = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=config.num_image_tokens,
    )
    torch.manual_seed(config.seed)
    model = LlavaForConditionalGeneration(llava)
    if config.position_init == "sincos":
        embedding = model.model.vision_tower.embeddings.position_embedding.weight
        grid = config.image_size // config.patch_size
        with torch.no_grad():
            embedding.zero_()  # row 0 (the class token) stays zero
            embedding[1:] = sincos_2d_positions(grid, config.vision_width)
    return model


TEXT_LAYER_KEY = re.compile(r"^(.*\blanguage_model\.layers\.)(\d+)\.(.+)$")
ZERO_STARTED_PROJECTIONS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def repeat_text_layers(state: dict[str, torch.Tensor], repeated: list[int], text_depth: int) -> dict[str, torch.Tensor]:
    """A LLaVA state dict whose LM has a copy after each of the ``repeated`` layers: the copy's output projections
    are zero, so with the residual connections the deeper LM computes what the saved one did. ``text_depth``: the
    deeper LM's layer count; a saved LM of another depth than ``text_depth - len(repeated)`` is refused."""
    order = []
    for index in range(text_depth - len(repeated)):
        order.append((index, False))
        if index in repeated:
            order.append((index, True))
    layers: dict[int, dict[str, tuple[str, torch.Tensor]]] = {}
    adapted = {}
    for name, value in state.items():
        match = TEXT_LAYER_KEY.match(name)
        if match:
            layers.setdefault(int(match.group(2)), {})[match.group(3)] = (match.group(1), value)
        else:
            adapted[name] = value
    if sorted(layers) != list(range(text_depth - len(repeated))):
        raise InputError(f"init_from's LM has {len(layers)} layers; with repeat_text_layers {repeated} set "
                         f"text_depth to {len(layers) + len(repeated)}")
    for new_index, (old_index, is_copy) in enumerate(order):
        for suffix, (prefix, value) in layers[old_index].items():
            start = torch.zeros_like(value) if is_copy and suffix in ZERO_STARTED_PROJECTIONS else value.clone()
            adapted[f"{prefix}{new_index}.{suffix}"] = start
    return adapted


def sincos_2d_positions(grid: int, width: int) -> torch.Tensor:
    """``[grid * grid, width]`` codes of a row-major patch grid: the first half of the channels encodes the column,
    the second the row, each as sines and cosines of the index at ``width / 4`` geometric frequencies."""
    quarter = width // 4
    frequencies = 1.0 / (grid ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    index = torch.arange(grid, dtype=torch.float32)[:, None] * frequencies[None]  # [grid, quarter]
    per_axis = torch.cat([index.sin(), index.cos()], dim=1)  # [grid, width / 2]
    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([per_axis[columns.flatten()], per_axis[rows.flatten()]], dim=1)


def build_image_processor(config: VlmPretrainConfig) -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"height": config.image_size, "width": config.image_size}, do_center_crop=False,
        crop_size={"height": config.image_size, "width": config.image_size},
    )


def encode_conversation(tokenizer, config: VlmPretrainConfig, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Ids with the image token repeated ``num_image_tokens`` times, and labels supervising only the answers
    (each answer with the template's closing separator)."""
    template = get_template(config.conv_type)
    prepared = [(place_image(q, config.image_placement) if i == 0 else q, a) for i, (q, a) in enumerate(turns)]
    text = template.render(prepared)
    spans = []
    for index in range(len(turns)):
        opened = template.render(prepared[:index] + [(prepared[index][0], None)])
        closed = template.render(prepared[: index + 1])
        spans.append((len(opened), len(closed)))
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    image_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if token == image_id:
            ids += [image_id] * config.num_image_tokens
            labels += [IGNORE_INDEX] * config.num_image_tokens
            continue
        supervised = any(a <= start and end <= b for a, b in spans)
        ids.append(token)
        labels.append(token if supervised else IGNORE_INDEX)
    return ids[: config.max_length], labels[: config.max_length]


def train_sample(index: int, max_objects: int):
    """Train sample ``index``; with ``max_objects`` below the world's maximum, the first sample of a fixed walk of
    train indices from ``index`` whose scene has at most ``max_objects`` objects (every batch row stays
    reproducible)."""
    if max_objects >= MAX_OBJECTS:
        return generate_sample(split_seed("train", index))
    candidate = index
    while True:
        scene = generate_scene(split_seed("train", candidate))
        if len(scene.objects) <= max_objects:
            return sample_from_scene(scene, split_seed("train", candidate))
        candidate = (candidate + 1_000_003) % SPLIT_SIZE


def draw_batch(config: VlmPretrainConfig, step: int, tokenizer, image_processor) -> dict[str, torch.Tensor]:
    images, id_lists, label_lists, patch_labels, target_patches = [], [], [], [], []
    grid = config.image_size // config.patch_size
    for row in range(config.batch_size):
        index = step * config.batch_size + row
        rng = np.random.default_rng([config.seed, index])
        sample = train_sample(phase_train_index(config.seed, index), config.max_objects)
        turns, targets = scene_turns_and_targets(sample, rng, config)
        images.append(Image.fromarray(sample.image))
        ids, labels = encode_conversation(tokenizer, config, turns)
        id_lists.append(ids)
        label_lists.append(labels)
        if config.patch_label_weight:
            patch_labels.append(patch_object_labels(sample, grid))
        if config.target_patch_weight:
            target_patches.append(target_patch_labels(sample, targets[0], grid))
    input_ids, labels, attention = pad_right(id_lists, label_lists, tokenizer.pad_token_id)
    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "pixel_values": pixel_values}
    if patch_labels:
        batch["patch_labels"] = torch.stack(patch_labels)
    if target_patches:
        batch["target_patches"] = torch.stack(target_patches)
    return batch


def target_patch_labels(scene, target, grid: int, min_cover: float = 0.25) -> torch.Tensor:
    """``[grid * grid]`` row-major: 1.0 where the patch lies on ``target`` (at least ``min_cover`` of its area, or the
    patch holding the target's innermost point, which a referring answer names), 0.0 elsewhere, and -1.0 (ignored)
    everywhere when the turn asks about no object; 0.0 everywhere when it asks about one the scene lacks. ``target``
    may be a tuple of objects (a list turn): a patch is 1.0 when it is one of theirs."""
    if target is None:
        return torch.full((grid * grid,), -1.0)
    if target is ABSENT:
        return torch.zeros(grid * grid)
    if isinstance(target, tuple):
        return torch.stack([target_patch_labels(scene, obj, grid, min_cover) for obj in target]).amax(dim=0)
    cover = patch_cover(target.mask, grid)
    labels = (cover >= min_cover).float()
    column, row = grid_cell(target, scene.width, scene.height)  # on the answers' grid, which may be finer
    labels[row * grid // GROUNDING_GRID, column * grid // GROUNDING_GRID] = 1.0
    return labels.flatten()


def patch_cover(mask: np.ndarray, grid: int) -> torch.Tensor:
    """``[grid, grid]`` share of each patch's pixels that the boolean ``[H, W]`` mask covers (any image size)."""
    height, width = mask.shape
    rows = [(r * height // grid, (r + 1) * height // grid) for r in range(grid)]
    columns = [(c * width // grid, (c + 1) * width // grid) for c in range(grid)]
    return torch.tensor([[float(mask[a:b, c:d].mean()) for c, d in columns] for a, b in rows])


def patch_object_labels(scene, grid: int) -> torch.Tensor:
    """``[grid * grid, 2]`` (colour, shape) class of the object under each patch's centre, row-major; background is
    the last class of each (``len(COLOUR_NAMES)``, ``len(SHAPES)``)."""
    labels = torch.tensor([len(COLOUR_NAMES), len(SHAPES)]).repeat(grid * grid, 1)
    masks = [obj.mask for obj in scene.objects]  # each a fresh full-image array: build them once
    for k in range(grid * grid):
        row, column = divmod(k, grid)
        x, y = int((column + 0.5) * scene.width / grid), int((row + 0.5) * scene.height / grid)
        for obj, mask in zip(scene.objects, masks):
            if mask[y, x]:
                labels[k] = torch.tensor([COLOUR_NAMES.index(obj.colour), SHAPES.index(obj.shape)])
    return labels


class PatchLabelHead(torch.nn.Module):
    """Linear read-out of a patch's object colour and shape from the image token the LM receives."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, len(COLOUR_NAMES) + 1 + len(SHAPES) + 1)

    def loss(self, image_tokens: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
        logits = self.linear(image_tokens.float())
        colours = len(COLOUR_NAMES) + 1
        return (F.cross_entropy(logits[..., :colours].flatten(0, 1), patch_labels[..., 0].flatten())
                + F.cross_entropy(logits[..., colours:].flatten(0, 1), patch_labels[..., 1].flatten()))


class TargetPatchHead(torch.nn.Module):
    """Linear read-out, from an image token's hidden state, of whether its patch lies on the queried object."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, 1)

    def loss(self, image_states: torch.Tensor, target_patches: torch.Tensor) -> torch.Tensor:
        logits = self.linear(image_states.float())[..., 0]
        asked = target_patches >= 0
        if not asked.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[asked], target_patches[asked])


TRAINING_AIDS = ("patch_label_head", "target_patch_head")  # heads trained beside the LLaVA, never saved with it
TRAINING_AIDS_FILE = "training_aids.safetensors"  # ... but kept beside it (save_training_aids)


def is_training_aid(parameter_name: str) -> bool:
    return parameter_name.split(".", 1)[0] in TRAINING_AIDS


def save_training_aids(model, folder: Path) -> None:
    """The trained heads, beside the saved LLaVA (which never holds them), so that a later phase started with
    ``init_from=<model folder>`` continues them instead of starting them afresh."""
    heads = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if is_training_aid(name)}
    if heads:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(heads, str(folder / TRAINING_AIDS_FILE))


def image_token_states(states: torch.Tensor, image_positions: torch.Tensor) -> torch.Tensor:
    """``[rows, num_image_tokens, width]``: the hidden states at the image tokens of each row."""
    return states[image_positions].reshape(image_positions.shape[0], -1, states.shape[-1])


def llava_forward(model, config: VlmPretrainConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  **kwargs):
    """The LLaVA's forward under the stage's image attention (llava-hf repeats the image token once per patch)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    image_positions = input_ids == model.config.image_token_id if config.image_attention == "bidirectional" else None
    mask = decoder_attention_mask(attention_mask, image_positions, None, model.config.get_text_config())
    return model(input_ids=input_ids, attention_mask=mask, **kwargs)


def training_loss(model, batch: dict[str, torch.Tensor], config: VlmPretrainConfig) -> tuple[torch.Tensor, dict]:
    """The LM loss, plus the weighted patch-label and target-patch losses when the config asks for them."""
    patch_labels = batch.pop("patch_labels", None)
    target_patches = batch.pop("target_patches", None)
    if patch_labels is None and target_patches is None:
        return llava_forward(model, config, **batch).loss, {}
    out = llava_forward(model, config, **batch, output_hidden_states=True)
    image_positions = batch["input_ids"] == model.config.image_token_id
    loss, extra = out.loss, {}
    if patch_labels is not None:
        patch_loss = model.patch_label_head.loss(image_token_states(out.hidden_states[0], image_positions), patch_labels)
        loss = loss + config.patch_label_weight * patch_loss
        extra["patch_loss"] = round(float(patch_loss.detach()), 5)
    if target_patches is not None:
        states = image_token_states(out.hidden_states[config.target_patch_layer], image_positions)
        target_loss = model.target_patch_head.loss(states, target_patches)
        loss = loss + config.target_patch_weight * target_loss
        extra["target_patch_loss"] = round(float(target_loss.detach()), 5)
    return loss, extra


@torch.no_grad()
def evaluate_vlm(model, tokenizer, image_processor, config: VlmPretrainConfig, num_scenes: int) -> dict[str, float]:
    """Answer-token accuracy (teacher forced) on val-split conversations: the share of answer tokens predicted
    exactly, overall and for referring turns."""
    model.eval()
    correct = total = 0
    for index in range(num_scenes):
        rng = np.random.default_rng([config.seed, 10_000_000 + index])
        sample = generate_sample(split_seed("val", index))
        ids, labels = encode_conversation(tokenizer, config, scene_turns(sample, rng, config))
        pixel_values = image_processor(images=[Image.fromarray(sample.image)], return_tensors="pt")["pixel_values"]
        device = next(model.parameters()).device
        ids_tensor = torch.tensor([ids], device=device)
        logits = llava_forward(model, config, ids_tensor, pixel_values=pixel_values.to(device)).logits[0]
        predicted = logits[:-1].argmax(-1).cpu()
        target = torch.tensor(labels[1:])
        keep = target != IGNORE_INDEX
        correct += int((predicted[keep] == target[keep]).sum())
        total += int(keep.sum())
    model.train()
    return {"val_token_accuracy": correct / max(total, 1)}


def pretrain_vlm(config: VlmPretrainConfig, resume: bool = False, stop_after: int | None = None,
                 progress: bool = True) -> Path:
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    output_dir = Path(config.output_dir)
    checkpoint = checkpoint_to_resume(output_dir, resume)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = output_dir / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = (PreTrainedTokenizerFast.from_pretrained(str(_init_tokenizer_dir(Path(config.init_from))))
                     if config.init_from else build_world_tokenizer(config))
        tokenizer.save_pretrained(str(tokenizer_dir))
    image_processor = build_image_processor(config)
    accelerator = new_accelerator(config.precision, cpu=not torch.cuda.is_available())
    model = build_llava(config, tokenizer)
    if config.patch_label_weight:
        model.patch_label_head = PatchLabelHead(config.text_width)
    if config.target_patch_weight:
        model.target_patch_head = TargetPatchHead(config.text_width)
    if config.init_from and checkpoint is None:
        deepen = (partial(repeat_text_layers, repeated=config.repeat_text_layers, text_depth=config.text_depth)
                  if config.repeat_text_layers else None)
        load_init_weights(Path(config.init_from), model, LlavaForConditionalGeneration, "toy LLaVA", is_training_aid,
                          extra_file=TRAINING_AIDS_FILE, adapt_state=deepen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(config.warmup_steps, config.steps))
    start = load_checkpoint(checkpoint, model, optimizer, scheduler) if checkpoint is not None else 0
    (output_dir / "config.yaml").write_text(json.dumps(config.to_dict(), indent=2))
    model, optimizer = accelerator.prepare(model, optimizer)
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(range(start, end), initial=start, total=config.steps, disable=not progress, desc="toy LLaVA")
    began = time.time()
    model.train()
    for step in bar:
        batch = {k: v.to(accelerator.device) for k, v in draw_batch(config, step, tokenizer, image_processor).items()}
        with accelerator.autocast():
            loss, extra = training_loss(model, batch, config)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        record = {"step": done, "lr": scheduler.get_last_lr()[0], "loss": round(float(loss.detach()), 5), **extra}
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if config.val_every and done % config.val_every == 0 or done == config.steps:
            record.update(evaluate_vlm(accelerator.unwrap_model(model), tokenizer, image_processor, config, config.val_scenes))
        if done % config.log_every == 0 or "val_token_accuracy" in record:
            record["elapsed_s"] = round(time.time() - began, 1)
            with open(output_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if done % config.save_every == 0 or done == end:
            save_checkpoint(output_dir, done, accelerator.unwrap_model(model), optimizer, scheduler, config)
    final = output_dir / FINAL_MODEL_DIR
    if end == config.steps:
        model = accelerator.unwrap_model(model)
        save_training_aids(model, final)
        for aid in TRAINING_AIDS:  # not part of the LLaVA
            if hasattr(model, aid):
                delattr(model, aid)
        model.save_pretrained(final)
        tokenizer.save_pretrained(str(final))
        image_processor.save_pretrained(str(final))
        stage = {"conv_type": config.conv_type, "image_placement": config.image_placement,
                 "image_attention": config.image_attention}
        (final / STAGE_INFO_NAME).write_text(json.dumps(stage) + "\n")
    return final
