"""The SAM branch's image transform: resize the longest side, normalise, pad (segment-anything's rule)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def resized_size_longest_side(height: int, width: int, target: int) -> tuple[int, int]:
    """``scale = target / max(h, w)``; each side ``int(side * scale + 0.5)``."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SamTransform:
    """PIL RGB image -> (``[3, S, S]`` float tensor, resized ``(h, w)``).

    Resizing is PIL bilinear on uint8 (as segment-anything's ``ResizeLongestSide`` does through torchvision's PIL
    path); normalisation with SAM's pixel mean/std on the 0-255 scale; zero padding right/bottom *after*
    normalisation.
    """

    def __init__(self, image_size: int = 1024, mean=SAM_PIXEL_MEAN, std=SAM_PIXEL_STD):
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def resize(self, image: Image.Image) -> np.ndarray:
        """The uint8 ``[h, w, 3]`` resized image."""
        height, width = image.height, image.width
        new_h, new_w = resized_size_longest_side(height, width, self.image_size)
        return np.array(image.resize((new_w, new_h), Image.BILINEAR))

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        resized = self.resize(image)
        pixels = torch.from_numpy(resized).permute(2, 0, 1).float()
        pixels = (pixels - self.mean) / self.std
        height, width = resized.shape[:2]
        padded = torch.zeros((3, self.image_size, self.image_size), dtype=torch.float32)
        padded[:, :height, :width] = pixels
        return padded, (height, width)
