"""The processor: owns the tokenizer, both image transforms and the conversation template, and saves them together."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, PreTrainedTokenizerBase

from .conversation import DEFAULT_IMAGE_TOKEN, check_image_placement, get_template, with_image_placeholder
from .mask_regions import apply_mask_regions, check_mask_regions
from .sam_transform import SamTransform
from .tokenization import decode_answer, encode_with_image_placeholder, load_tokenizer, token_id

PROCESSOR_CONFIG_NAME = "reasonseg_processor.json"
SEG_TOKEN = "[SEG]"


@dataclass
class ProcessorSettings:
    """What, beside the tokenizer and the vision image processor, decides how inputs are prepared."""

    conv_type: str = "llava_v1"
    use_im_start_end: bool = False
    sam_image_size: int = 1024
    tokenizer_style: str = "llama_legacy"
    image_token: str = DEFAULT_IMAGE_TOKEN
    # "before_text": LLaVA's and LISA's "<image>\n{question}"; "after_text": "{question}\n<image>", for a model
    # trained so (the demo model: its image tokens see the question)
    image_placement: str = "before_text"
    image_token_index: int = -200
    seg_token: str = SEG_TOKEN
    add_bos: bool = True
    model_max_length: int = 512
    # what is kept of each thresholded mask: "all" its regions (LISA), or the "largest" (processing/mask_regions.py)
    mask_regions: str = "all"


@dataclass
class ImageInputs:
    """One image, prepared for both branches.

    pixel_values ``[1, 3, h, w]`` for the vision tower, sam_pixel_values ``[1, 3, S, S]`` for SAM,
    resized_size: the SAM-resized ``(H, W)`` before padding; original_size: the input ``(H, W)``.
    """

    pixel_values: torch.Tensor
    sam_pixel_values: torch.Tensor
    resized_size: tuple[int, int]
    original_size: tuple[int, int]


def batch_pixel_values(values: list[torch.Tensor]):
    """Several images' vision inputs (each ``ImageInputs.pixel_values``) for ``encode_images``: one concatenated
    tensor when they share a shape, else the list (Sa2VA: each image has its own number of tiles)."""
    if len({tuple(v.shape) for v in values}) == 1:
        return torch.cat(values)
    return list(values)


class ReasonSegProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor, settings: ProcessorSettings | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.settings = settings or ProcessorSettings()
        self.template = get_template(self.settings.conv_type)
        check_image_placement(self.settings.image_placement)
        check_mask_regions(self.settings.mask_regions)
        self.sam_transform = SamTransform(self.settings.sam_image_size)

    # ---- ids ----
    @property
    def seg_token_id(self) -> int | None:
        return token_id(self.tokenizer, self.settings.seg_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def stop_token_ids(self) -> set[int]:
        """The ids that end an answer: the tokenizer's EOS (LISA's and LLaVA's generation stop there only)."""
        return {self.eos_token_id} if self.eos_token_id is not None else set()

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else pad

    # ---- images ----
    def preprocess_image(self, image: Image.Image) -> ImageInputs:
        """An RGB PIL image -> :class:`ImageInputs`."""
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        sam_pixels, resized = self.sam_transform(image)
        return ImageInputs(pixel_values, sam_pixels.unsqueeze(0), resized, (image.height, image.width))

    def post_process_mask(self, mask):
        """One thresholded ``HxW`` mask after this processor's ``mask_regions`` rule."""
        return apply_mask_regions(mask, self.settings.mask_regions)

    # ---- text ----
    def user_message(self, text: str, first_turn: bool) -> str:
        """The user's words as the template expects them: the image placeholder goes into the first turn."""
        if first_turn:
            return with_image_placeholder(text, self.settings.use_im_start_end, self.settings.image_placement)
        return text

    def conversation_prompt(self, turns: list[tuple[str, str | None]]) -> str:
        """Render raw user/assistant turns (placeholder added to the first user turn)."""
        prepared = [(self.user_message(user, i == 0), answer) for i, (user, answer) in enumerate(turns)]
        return self.template.render(prepared)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of a rendered prompt, with ``image_token_index`` where the image goes."""
        return encode_with_image_placeholder(
            self.tokenizer,
            text,
            self.settings.image_token,
            self.settings.image_token_index,
            self.settings.add_bos if add_bos is None else add_bos,
        )

    def continuation_ids(self, user_text: str) -> list[int]:
        """Ids that continue a conversation after a finished assistant turn: the next user turn, assistant open.

        Rendering the two-turn template and cutting off the first turn gives the exact separator convention
        of the template without re-tokenising earlier turns.
        """
        first = self.template.render([("x", "y")])
        both = self.template.render([("x", "y"), (user_text, None)])
        return self.encode(both[len(first) :], add_bos=False)

    def decode(self, ids: list[int]) -> str:
        return decode_answer(self.tokenizer, ids, self.settings.tokenizer_style)

    # ---- persistence ----
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        self.image_processor.save_pretrained(str(directory))
        (directory / PROCESSOR_CONFIG_NAME).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "ReasonSegProcessor":
        directory = Path(directory)
        settings = ProcessorSettings(**json.loads((directory / PROCESSOR_CONFIG_NAME).read_text()))
        for key, value in overrides.items():
            setattr(settings, key, value)
        check_mask_regions(settings.mask_regions, source=str(directory / PROCESSOR_CONFIG_NAME))
        tokenizer = load_tokenizer(directory, settings.tokenizer_style)
        image_processor = AutoImageProcessor.from_pretrained(str(directory))
        return cls(tokenizer, image_processor, settings)
