"""Turning a :class:`~reasonseg.inference.segmenter.Prediction` into the API's answer object."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..inference.mask_io import mask_record

# one colour per mask, the same list the web page uses
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


def overlay_png(image: Image.Image, masks: list[np.ndarray], alpha: float = 0.5) -> bytes:
    """The image with mask ``i`` blended in ``PALETTE[i % len(PALETTE)]``, as PNG bytes."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for index, mask in enumerate(masks):
        colour = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
        canvas[mask] = canvas[mask] * (1 - alpha) + colour * alpha
    buffer = io.BytesIO()
    Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def answer_object(prediction, image: Image.Image | None = None, return_overlay: bool = False) -> dict:
    """``{text, seg_forced, masks: [{rle, area, bbox, score}], overlay_png_base64?}``."""
    masks = []
    for mask, score in zip(prediction.masks, prediction.scores):
        record = mask_record(mask)
        masks.append({"rle": record["rle"], "area": record["area"], "bbox": record["bbox"], "score": float(score)})
    answer = {"text": prediction.text, "seg_forced": bool(prediction.seg_forced), "masks": masks}
    if return_overlay and image is not None:
        answer["overlay_png_base64"] = base64.b64encode(overlay_png(image, prediction.masks)).decode("ascii")
    return answer
