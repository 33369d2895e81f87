"""What a processor does to each thresholded mask: keep every connected region (LISA), or only the largest.

One ``[SEG]`` names one object in a model trained with one ``[SEG]`` per object (the demo model), so a mask that
also lights up a patch of some other shape is wrong there, and keeping its largest region removes the stray patch
(nnU-Net's "keep the largest component" post-processing, chosen per model on validation data). A model that
answers "all the cars" with one mask (LISA's checkpoints) must keep every region, hence the default.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

MASK_REGION_RULES = ("all", "largest")


def check_mask_regions(rule: str, source: str | None = None) -> str:
    """``rule`` if it is one of :data:`MASK_REGION_RULES`; ``source`` (a settings file) prefixes the error."""
    if rule not in MASK_REGION_RULES:
        where = f"{source}: " if source else ""
        raise InputError(f"{where}mask_regions must be one of {', '.join(MASK_REGION_RULES)}, not {rule!r}")
    return rule


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The mask's largest 8-connected region (the first in scan order among equals); an empty mask stays empty."""
    import cv2  # here, not at import: the CLI's flags read MASK_REGION_RULES and should not pay for OpenCV

    mask = np.asarray(mask, dtype=bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:  # background plus at most one region
        return mask
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def apply_mask_regions(mask: np.ndarray, rule: str) -> np.ndarray:
    """``mask`` (``HxW`` bool) after the rule: ``"all"`` returns it as it is, ``"largest"`` its largest region."""
    return largest_region(mask) if check_mask_regions(rule) == "largest" else np.asarray(mask, dtype=bool)
