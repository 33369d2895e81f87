"""The input side of Sa2VA's Qwen-VL variants (``Sa2VAChatModelQwen``): the Qwen-VL image processor from
transformers (dynamic resolution), the Qwen chat format with the image in front of the question, the SAM2
transform of the InternVL family.

As Sa2VA's ``predict_forward`` for these variants:

* **Image.** Resized (bicubic) so each side is a multiple of ``patch_size x merge_size`` and the area lies between
  ``min_pixels`` and ``max_pixels`` (Sa2VA passes 512x28x28 and 2048x28x28), CLIP mean/std, cut into
  ``patch_size`` patches (two frames of the same image: ``temporal_patch_size``); every ``merge_size x merge_size``
  patches become one language-model token.
* **Text.** ``<|vision_start|><|image_pad|>...<|vision_end|>`` (one ``<|image_pad|>`` per merged token) in front of
  the question; a ``<image>`` the user wrote is dropped. The token side carries one placeholder id between
  ``<|vision_start|>`` and ``<|vision_end|>`` that the model replaces with all the image's tokens. Chat format:
  the released checkpoints' chat templates (Qwen2.5-VL's opens with the system turn ``You are a helpful
  assistant.``, Qwen3-VL's with none), later turns as Qwen's (``<|im_end|>\\n<|im_start|>user\\n...``).
* **SAM2.** As the InternVL family: squashed to 1024x1024, ``/255``, ImageNet mean/std rounded to bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from PIL import Image

from .processing_reasonseg import ImageInputs
from .sa2va import IMAGENET_MEAN, IMAGENET_STD, Sa2VAProcessor, bfloat16_rounded

QWEN_PROCESSOR_CONFIG_NAME = "sa2va_qwen_processor.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
QWEN25_SYSTEM_MESSAGE = "You are a helpful assistant."


@dataclass
class Sa2VAQwenProcessorSettings:
    """Everything beside the tokenizer that decides how inputs are prepared (saved as ``sa2va_qwen_processor.json``)."""

    template: str = "qwen_chat"
    system_message: str = QWEN25_SYSTEM_MESSAGE
    min_pixels: int = 512 * 28 * 28
    max_pixels: int = 2048 * 28 * 28
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    sam_image_size: int = 1024
    sam_mean: list[float] = field(default_factory=lambda: list(bfloat16_rounded(IMAGENET_MEAN)))
    sam_std: list[float] = field(default_factory=lambda: list(bfloat16_rounded(IMAGENET_STD)))
    image_token: str = "<image>"
    image_placement: ClassVar[str] = "before_text"  # Sa2VA always puts the image before the question (not a setting)
    image_token_index: int = -200
    image_start_token: str = "<|vision_start|>"
    image_end_token: str = "<|vision_end|>"
    image_context_token: str = "<|image_pad|>"
    seg_token: str = "[SEG]"
    add_bos: bool = False
    mask_regions: str = "all"  # see processing/mask_regions.py


class Sa2VAQwenProcessor(Sa2VAProcessor):
    """Tokenizer + Qwen-VL image processor + SAM2 transform + chat format, with :class:`Sa2VAProcessor`'s interface.

    ``preprocess_image`` returns ``pixel_values`` ``[1, t, h, w, D]``: the Qwen-VL processor's flattened patches
    (``D = 3 x temporal_patch_size x patch_size^2``, in its order) viewed with the image's patch grid as the shape,
    so images of one size concatenate and the grid M-RoPE needs travels with them."""

    settings_class = Sa2VAQwenProcessorSettings
    config_name = QWEN_PROCESSOR_CONFIG_NAME

    def __init__(self, tokenizer, settings: Sa2VAQwenProcessorSettings | None = None):
        super().__init__(tokenizer, settings)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        s = self.settings
        self.image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": s.min_pixels, "longest_edge": s.max_pixels},
            patch_size=s.patch_size,
            merge_size=s.merge_size,
            temporal_patch_size=s.temporal_patch_size,
            image_mean=list(s.image_mean),
            image_std=list(s.image_std),
        )

    def preprocess_image(self, image: Image.Image) -> ImageInputs:
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.settings
        out = self.image_processor(images=[image], return_tensors="pt")
        t, h, w = (int(v) for v in out["image_grid_thw"][0])
        patches = out["pixel_values"].to(torch.float32)
        sam = self.sam_pixel_values(image).unsqueeze(0)
        return ImageInputs(
            patches.reshape(1, t, h, w, patches.shape[-1]), sam, (s.sam_image_size, s.sam_image_size),
            (image.height, image.width),
        )

    def image_token_count(self, pixel_values: torch.Tensor) -> int:
        """How many ``<|image_pad|>`` tokens an image's ``pixel_values`` ``[1, t, h, w, D]`` stand for."""
        _, t, h, w, _ = pixel_values.shape
        return t * h * w // self.settings.merge_size**2

    def user_message(self, text: str, first_turn: bool) -> str:
        """The image in front of the question in the first turn (Sa2VA drops a ``<image>`` the user wrote)."""
        s = self.settings
        text = text.replace(s.image_token, "")
        if not first_turn:
            return text
        return s.image_start_token + s.image_token + s.image_end_token + text

    def expand_image_ids(self, ids: list[int], num_tokens: int) -> list[int]:
        """The ids Qwen-VL itself tokenises: the placeholder spelled out as ``<|image_pad|>`` x ``num_tokens``."""
        out: list[int] = []
        for i in ids:
            out.extend([self.image_context_token_id] * num_tokens if i == self.settings.image_token_index else [i])
        return out
