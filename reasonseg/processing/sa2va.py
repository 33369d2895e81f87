"""Sa2VA's input side: InternVL dynamic tiling, its chat templates, the SAM2 transform, and the processor owning them.

Semantics follow Sa2VA's ``predict_forward`` (documented in ``docs/sa2va.md``):

* **Tiles.** The image is cut into 1-12 tiles of 448x448 on the grid whose aspect ratio is closest to the image's
  (ties go to the larger grid only when the image has more than half its pixels), plus a 448x448 thumbnail when
  there is more than one tile. PIL bicubic resizing, ``/255``, ImageNet mean/std.
* **Text.** The first user turn gets the image: ``<img>`` + ``<IMG_CONTEXT>`` x 256 per tile + ``</img>`` in front
  of the question (where the user wrote ``<image>``, or at the start when they did not). The token side carries a
  single placeholder id that the model replaces with all tile features.
* **SAM2.** The image squashed to 1024x1024 (PIL bicubic, aspect ratio not kept), ``/255``, normalised with the
  ImageNet mean/std *rounded to bfloat16*, as Sa2VA's ``preprocess_image`` does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ..errors import CheckpointError, InputError
from .mask_regions import apply_mask_regions, check_mask_regions
from .processing_reasonseg import ImageInputs

PROCESSOR_CONFIG_NAME = "sa2va_processor.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def bfloat16_rounded(values) -> tuple[float, ...]:
    return tuple(float(v) for v in torch.tensor(values, dtype=torch.bfloat16).float())


# ---------------------------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class Sa2VATemplate:
    """A chat format as Sa2VA (xtuner) writes it: ``system`` (optional), then per turn
    ``instruction.format(input=...)`` + answer + ``suffix`` + ``sep``; the open assistant turn ends the instruction."""

    name: str
    instruction: str
    system: str = ""
    suffix: str = ""
    sep: str = ""
    stop_words: tuple[str, ...] = ()

    def render(self, turns: list[tuple[str, str | None]], system_message: str = "") -> str:
        text = self.system.format(system=system_message) if (system_message and self.system) else ""
        for index, (user, answer) in enumerate(turns):
            text += self.instruction.format(input=user, round=index + 1, bot_name="BOT")
            if answer is not None:
                text += answer + self.suffix + self.sep
        return text


_IM_INSTRUCTION = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
TEMPLATES = {
    "qwen_chat": Sa2VATemplate(
        "qwen_chat",
        _IM_INSTRUCTION,
        system="<|im_start|>system\n{system}<|im_end|>\n",
        suffix="<|im_end|>",
        sep="\n",
        stop_words=("<|im_end|>", "<|endoftext|>"),
    ),
    "internlm2_chat": Sa2VATemplate(
        "internlm2_chat",
        _IM_INSTRUCTION,
        system="<|im_start|>system\n{system}<|im_end|>\n",
        suffix="<|im_end|>",
        sep="\n",
        stop_words=("<|im_end|>",),
    ),
    "phi3_chat": Sa2VATemplate(
        "phi3_chat",
        "<|user|>\n{input}<|end|>\n<|assistant|>\n",
        system="<|system|>\n{system}<|end|>\n",
        suffix="<|end|>",
        sep="\n",
        stop_words=("<|end|>",),
    ),
}


def get_sa2va_template(name: str) -> Sa2VATemplate:
    key = name.replace("-", "_")
    if key not in TEMPLATES:
        raise CheckpointError(
            f"Sa2VA chat template {name!r} is not supported; supported templates: {', '.join(TEMPLATES)}"
        )
    return TEMPLATES[key]


# ---------------------------------------------------------------------------------------------------- tiling
def tile_grid(width: int, height: int, min_tiles: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """The (columns, rows) grid for an image: closest aspect ratio; on an exact tie a later (larger) grid wins
    only when the image area exceeds half the grid's area in tile pixels. Candidates are visited in the order
    InternVL visits them (a set of grids sorted by tile count)."""
    aspect = width / height
    candidates = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    best, best_diff = (1, 1), float("inf")
    for columns, rows in sorted(candidates, key=lambda grid: grid[0] * grid[1]):
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


def dynamic_tiles(
    image: Image.Image, min_tiles: int = 1, max_tiles: int = 12, tile_size: int = 448, use_thumbnail: bool = True
) -> list[Image.Image]:
    """Row-major tiles of the image resized (bicubic) onto its grid, then the thumbnail when there are several."""
    columns, rows = tile_grid(image.width, image.height, min_tiles, max_tiles, tile_size)
    resized = image.resize((tile_size * columns, tile_size * rows), Image.BICUBIC)
    tiles = []
    for index in range(columns * rows):
        left, top = (index % columns) * tile_size, (index // columns) * tile_size
        tiles.append(resized.crop((left, top, left + tile_size, top + tile_size)))
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.BICUBIC))
    return tiles


def normalized_tensor(image: Image.Image, mean, std) -> torch.Tensor:
    """uint8 RGB -> ``[3, H, W]`` float32: ``(x / 255 - mean) / std``, in that order of float32 operations."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    pixels = pixels.to(torch.float32).div(255)
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return pixels.sub(mean).div(std)


# ---------------------------------------------------------------------------------------------------- processor
@dataclass
class Sa2VAProcessorSettings:
    """Everything beside the tokenizer that decides how Sa2VA inputs are prepared (saved as ``sa2va_processor.json``)."""

    template: str = "qwen_chat"
    system_message: str = ""
    tile_size: int = 448
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    sam_image_size: int = 1024
    sam_mean: list[float] = field(default_factory=lambda: list(bfloat16_rounded(IMAGENET_MEAN)))
    sam_std: list[float] = field(default_factory=lambda: list(bfloat16_rounded(IMAGENET_STD)))
    image_token: str = "<image>"
    image_placement: ClassVar[str] = "before_text"  # Sa2VA always puts the image before the question (not a setting)
    image_token_index: int = -200
    image_start_token: str = "<img>"
    image_end_token: str = "</img>"
    image_context_token: str = "<IMG_CONTEXT>"
    seg_token: str = "[SEG]"
    add_bos: bool = False
    mask_regions: str = "all"  # see processing/mask_regions.py


def load_sa2va_tokenizer(directory: str | Path):
    """The checkpoint's tokenizer without running its remote code: ``tokenizer.json`` through the fast backend, or a
    tokenizer class transformers ships (``trust_remote_code=False``)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as err:  # remote-code tokenizers (InternLM2) end here
        raise CheckpointError(
            f"the tokenizer in {directory} needs remote code ({type(err).__name__}); reasonseg does not run it. "
            "Save a tokenizer.json for it (tokenizers' fast format) beside the checkpoint and load again"
        ) from None


class Sa2VAProcessor:
    """Tokenizer + tiling + SAM2 transform + chat template of a Sa2VA model, with :class:`ReasonSegProcessor`'s
    interface (``preprocess_image``, ``conversation_prompt``, ``encode``, ``continuation_ids``, ``decode``)."""

    settings_class = Sa2VAProcessorSettings
    config_name = PROCESSOR_CONFIG_NAME

    def __init__(self, tokenizer, settings=None):
        self.tokenizer = tokenizer
        self.settings = settings or self.settings_class()
        self.template = get_sa2va_template(self.settings.template)
        check_mask_regions(self.settings.mask_regions)
        missing = [
            t
            for t in (self.settings.image_start_token, self.settings.image_end_token, self.settings.seg_token)
            if t not in tokenizer.get_vocab()
        ]
        if missing:
            raise CheckpointError(
                f"the tokenizer lacks Sa2VA's tokens {', '.join(missing)}; is this the Sa2VA checkpoint's tokenizer?"
            )

    def post_process_mask(self, mask):
        """One thresholded ``HxW`` mask after this processor's ``mask_regions`` rule."""
        return apply_mask_regions(mask, self.settings.mask_regions)

    # ---- ids ----
    def _vocab_id(self, token: str) -> int | None:
        return self.tokenizer.get_vocab().get(token)

    @property
    def seg_token_id(self) -> int:
        return self._vocab_id(self.settings.seg_token)

    @property
    def image_context_token_id(self) -> int | None:
        return self._vocab_id(self.settings.image_context_token)

    @property
    def eos_token_id(self) -> int | None:
        """The token that ends an answer: the template's suffix (``<|im_end|>``) when it is one token, as Sa2VA's
        stop word; else the tokenizer's EOS."""
        suffix_id = self._vocab_id(self.template.suffix) if self.template.suffix else None
        return suffix_id if suffix_id is not None else self.tokenizer.eos_token_id

    @property
    def stop_token_ids(self) -> set[int]:
        """The ids that end an answer, as Sa2VA's ``predict_forward`` stops: the template's stop words that are
        in the vocabulary (``qwen_chat``: ``<|im_end|>`` and ``<|endoftext|>``), the suffix token and the
        tokenizer's EOS (its generation config)."""
        ids = {self.tokenizer.eos_token_id, self.eos_token_id}
        ids.update(self._vocab_id(word) for word in self.template.stop_words)
        return {i for i in ids if i is not None}

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return 0 if pad is None else pad

    # ---- images ----
    def tile_images(self, image: Image.Image) -> list[Image.Image]:
        s = self.settings
        return dynamic_tiles(image, s.min_tiles, s.max_tiles, s.tile_size, s.use_thumbnail)

    def sam_pixel_values(self, image: Image.Image) -> torch.Tensor:
        """``[3, S, S]``: squashed to ``S x S`` (bicubic), ``(x / 255 - mean_bf16) / std_bf16``."""
        size = self.settings.sam_image_size
        squashed = image.resize((size, size), Image.BICUBIC)
        return normalized_tensor(squashed, self.settings.sam_mean, self.settings.sam_std)

    def preprocess_image(self, image: Image.Image) -> ImageInputs:
        """An RGB PIL image -> tiles ``[1, T, 3, 448, 448]`` (one image of T tiles) and the SAM2 input
        ``[1, 3, 1024, 1024]``; resized_size is the whole SAM2 input (the image is squashed, not padded)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.settings
        tiles = torch.stack([normalized_tensor(tile, s.image_mean, s.image_std) for tile in self.tile_images(image)])
        sam = self.sam_pixel_values(image).unsqueeze(0)
        return ImageInputs(tiles.unsqueeze(0), sam, (s.sam_image_size, s.sam_image_size), (image.height, image.width))

    # ---- text ----
    def user_message(self, text: str, first_turn: bool) -> str:
        """The user's words with the image where Sa2VA puts it: ``<img><image></img>`` replacing the user's
        ``<image>`` (first one only), or in front of the text when they wrote none. Later turns carry no image."""
        s = self.settings
        if not first_turn:
            return text.replace(s.image_token, "")
        if s.image_token not in text:
            text = s.image_token + text
        head, _, tail = text.partition(s.image_token)
        image = s.image_start_token + s.image_token + s.image_end_token
        return head + image + tail.replace(s.image_token, "")

    def conversation_prompt(self, turns: list[tuple[str, str | None]]) -> str:
        prepared = [(self.user_message(user, i == 0), answer) for i, (user, answer) in enumerate(turns)]
        return self.template.render(prepared, self.settings.system_message)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids with ``image_token_index`` where the image goes (text between placeholders tokenised alone;
        the placeholder always sits between ``<img>`` and ``</img>``, which split the text anyway)."""
        s = self.settings
        ids: list[int] = []
        if (s.add_bos if add_bos is None else add_bos) and self.tokenizer.bos_token_id is not None:
            ids.append(self.tokenizer.bos_token_id)
        for index, chunk in enumerate(text.split(s.image_token)):
            if index > 0:
                ids.append(s.image_token_index)
            if chunk:
                ids.extend(self.tokenizer.encode(chunk, add_special_tokens=False))
        return ids

    def training_pieces(self, turns: list[tuple[str, str]]) -> list[tuple[list[int], bool]]:
        """A finished conversation as Sa2VA (xtuner) tokenises it for training: per turn the instruction (with the
        system prompt and the image in the first), the answer with the template's suffix (``<|im_end|>``) and the
        separator, each tokenised alone; ``True`` marks the supervised pieces (the answers and their end token).

        The ids are those of :meth:`encode` over :meth:`conversation_prompt` wherever the template's special tokens
        split the text (they do for Sa2VA's templates), so the model trains on the prompts it is asked at inference."""
        template, pieces = self.template, []
        for index, (user, answer) in enumerate(turns):
            instruction = template.instruction.format(input=self.user_message(user, index == 0), round=index + 1,
                                                      bot_name="BOT")
            if index == 0 and self.settings.system_message and template.system:
                instruction = template.system.format(system=self.settings.system_message) + instruction
            pieces.append((self.encode(instruction, add_bos=None if index == 0 else False), False))
            pieces.append((self.encode(answer + template.suffix, add_bos=False), True))
            if template.sep:
                pieces.append((self.encode(template.sep, add_bos=False), False))
        return pieces

    def expand_image_ids(self, ids: list[int], num_tiles: int, tokens_per_tile: int = 256) -> list[int]:
        """The ids Sa2VA itself tokenises: the placeholder spelled out as ``<IMG_CONTEXT>`` x (tokens per tile x tiles)."""
        context = [self.image_context_token_id] * (tokens_per_tile * num_tiles)
        out: list[int] = []
        for i in ids:
            out.extend(context if i == self.settings.image_token_index else [i])
        return out

    def continuation_ids(self, user_text: str) -> list[int]:
        """Ids continuing a conversation after an answer that ended with its suffix token: separator + next turn."""
        text = self.template.sep + self.template.instruction.format(
            input=self.user_message(user_text, False), round=2, bot_name="BOT"
        )
        return self.encode(text, add_bos=False)

    def decode(self, ids: list[int]) -> str:
        """The answer as Sa2VA prints it (``[SEG]`` kept) without the stop token, padding and stray placeholders."""
        drop = self.stop_token_ids | {self.pad_token_id}
        kept = [i for i in ids if i not in drop and i >= 0]
        return self.tokenizer.decode(kept, skip_special_tokens=False).strip()

    # ---- persistence ----
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        (directory / self.config_name).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "Sa2VAProcessor":
        directory = Path(directory)
        path = directory / cls.config_name
        if not path.is_file():
            raise CheckpointError(f"{directory} has no {cls.config_name}; it is not a converted Sa2VA checkpoint")
        settings = cls.settings_class(**json.loads(path.read_text()))
        for key, value in overrides.items():
            if not hasattr(settings, key):
                raise InputError(f"unknown Sa2VA processor setting {key!r}")
            setattr(settings, key, value)
        check_mask_regions(settings.mask_regions, source=str(path))
        return cls(load_sa2va_tokenizer(directory), settings)
