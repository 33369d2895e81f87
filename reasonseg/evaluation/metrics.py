"""The field's mask metrics, with LISA's exact definitions: gIoU, cIoU, and gRefCOCO's N-acc / T-acc.

For one predicted mask against one ground-truth label map (``HxW``; 1 = target, 0 = background, 255 = ignore):

* pixels whose ground truth is 255 are left out of both intersection and union;
* ``intersection`` = pixels predicted foreground that are target; ``union`` = pixels predicted foreground or target;
* ``IoU = intersection / (union + 1e-5)``, except that a mask with an empty union (no target, nothing predicted)
  scores 1.0 -- LISA adds 1.0 where the union is 0.

Over a set of masks:

* **gIoU** = mean of the per-mask IoUs;
* **cIoU** = total intersection / (total union + 1e-10), defined as 1.0 when the total union is 0.

A prediction is either a boolean mask or an array of logits / scores, foreground where ``> 0`` (LISA thresholds the
SAM logits at 0); a 0/1 or 0/255 integer mask is therefore read as expected. Inputs may be NumPy arrays or torch
tensors (any device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

IGNORE_VALUE = 255
# LISA's epsilons: per-mask IoU divides by union + 1e-5, cIoU by total union + 1e-10
PER_MASK_EPS = 1e-5
CUMULATIVE_EPS = 1e-10


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, possibly on an accelerator
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def foreground(pred) -> np.ndarray:
    """A prediction (bool mask, or logits / 0-1 / 0-255 values of any numeric dtype) -> bool mask (``> 0``)."""
    pred = _as_numpy(pred)
    if pred.dtype == np.bool_:
        return pred
    if not (np.issubdtype(pred.dtype, np.integer) or np.issubdtype(pred.dtype, np.floating)):
        raise InputError(f"a prediction must be a bool or numeric array, got dtype {pred.dtype}")
    return pred > 0


def mask_intersection_union(pred, gt, ignore_value: int = IGNORE_VALUE) -> tuple[int, int]:
    """Foreground intersection and union of one mask, leaving out the ignored ground-truth pixels.

    Args:
        pred: ``HxW`` bool mask or logits (foreground where ``> 0``).
        gt: ``HxW`` ground truth: a bool mask (nothing ignored), or an integer label map whose values are
            0 (background), 1 (target) and ``ignore_value`` (left out of both counts).
        ignore_value: the label-map value that is ignored.

    Returns:
        ``(intersection, union)`` as Python ints.
    """
    pred_fg = foreground(pred)
    gt = _as_numpy(gt)
    if pred_fg.shape != gt.shape:
        raise InputError(f"prediction shape {tuple(pred_fg.shape)} differs from ground-truth shape {tuple(gt.shape)}")
    if gt.dtype == np.bool_:
        target, valid = gt, None
    else:
        if not np.issubdtype(gt.dtype, np.integer):
            raise InputError(f"a ground-truth label map must be bool or integer, got dtype {gt.dtype}")
        target, valid = gt == 1, gt != ignore_value
        unexpected = valid & ~target & (gt != 0)
        if unexpected.any():
            values = np.unique(gt[unexpected])[:5].tolist()
            raise InputError(f"ground-truth label map has values {values}; expected only 0, 1 and {ignore_value}")
    if valid is not None:
        pred_fg = pred_fg & valid
    intersection = int(np.count_nonzero(pred_fg & target))
    union = int(np.count_nonzero(pred_fg | target))
    return intersection, union


def iou_from(intersection: int, union: int) -> float:
    """One mask's IoU as LISA computes it: ``intersection / (union + 1e-5)``, and 1.0 when the union is empty."""
    if intersection < 0 or union < 0 or intersection > union:
        raise InputError(f"invalid counts: intersection {intersection}, union {union}")
    if union == 0:
        return 1.0
    return intersection / (union + PER_MASK_EPS)


def first_mask_iou(masks, truth) -> float:
    """The IoU of an answer's first mask against ``truth`` (0 when the answer has no mask): how a one-target query
    answered with one or more ``[SEG]`` is scored by the demo model's fixed-query test and benchmarks."""
    predicted = masks[0] if len(masks) else np.zeros_like(np.asarray(truth), dtype=bool)
    return iou_from(*mask_intersection_union(predicted, truth))


@dataclass
class SegmentationMeter:
    """Streaming gIoU / cIoU over any number of masks; shards combine with :meth:`merge`.

    ``update`` takes one mask at a time (a sample with several masks calls it once per mask; every mask weighs the
    same in gIoU, as in LISA). A ``key`` (e.g. the sample id) keeps that mask's numbers in :attr:`per_key`.
    """

    ious: list[float] = field(default_factory=list)
    intersection: int = 0
    union: int = 0
    per_key: dict[str, dict[str, float | int]] = field(default_factory=dict)

    def update(self, pred, gt, key: str | None = None, ignore_value: int = IGNORE_VALUE) -> float:
        """Adds one ``HxW`` prediction against its ``HxW`` ground truth; returns that mask's IoU."""
        intersection, union = mask_intersection_union(pred, gt, ignore_value)
        return self.update_counts(intersection, union, key)

    def update_counts(self, intersection: int, union: int, key: str | None = None) -> float:
        """Adds one mask given its counts; returns its IoU."""
        iou = iou_from(int(intersection), int(union))
        if key is not None:
            if key in self.per_key:
                raise InputError(f"mask key {key!r} was added twice")
            self.per_key[key] = {"intersection": int(intersection), "union": int(union), "iou": iou}
        self.ious.append(iou)
        self.intersection += int(intersection)
        self.union += int(union)
        return iou

    def merge(self, other: "SegmentationMeter") -> "SegmentationMeter":
        """Adds another meter's masks (e.g. another shard's) into this one; returns self."""
        clashes = self.per_key.keys() & other.per_key.keys()
        if clashes:
            raise InputError(f"both meters hold mask key {sorted(clashes)[0]!r}; shards must not overlap")
        self.ious.extend(other.ious)
        self.intersection += other.intersection
        self.union += other.union
        self.per_key.update(other.per_key)
        return self

    @property
    def count(self) -> int:
        """Number of masks added."""
        return len(self.ious)

    @property
    def giou(self) -> float:
        """Mean per-mask IoU (NaN before any mask is added)."""
        # fsum: the same masks give the same value whatever order or sharding they came in
        return math.fsum(self.ious) / self.count if self.ious else math.nan

    @property
    def ciou(self) -> float:
        """Total intersection / total union (1.0 when the total union is 0; NaN before any mask is added)."""
        if not self.ious:
            return math.nan
        if self.union == 0:
            return 1.0
        return self.intersection / (self.union + CUMULATIVE_EPS)

    def summary(self) -> dict[str, float | int]:
        """``{"giou", "ciou", "count", "intersection", "union"}``."""
        return {
            "giou": self.giou,
            "ciou": self.ciou,
            "count": self.count,
            "intersection": self.intersection,
            "union": self.union,
        }


@dataclass
class GeneralizedReferringMeter:
    """gRefCOCO's no-target metrics (the GRES / ReLA benchmark), counted per sample.

    A sample *has a target* when its ground truth has at least one target pixel (ignored pixels do not count);
    a prediction is *empty* when it has no foreground pixel (a model that answers "no target" with a flag should
    pass an empty mask).

    * **N-acc** = (no-target samples predicted empty) / (no-target samples): how often "nothing is there" is
      recognised.
    * **T-acc** = (samples with a target predicted non-empty) / (samples with a target): how often a real target is
      not wrongly rejected.

    Either is NaN while no sample of its kind has been seen. gIoU/cIoU on gRefCOCO come from
    :class:`SegmentationMeter` (an empty prediction for a no-target sample scores IoU 1.0 there, a non-empty one 0).
    """

    no_target_empty: int = 0
    no_target_total: int = 0
    target_nonempty: int = 0
    target_total: int = 0

    def update(self, pred, gt, ignore_value: int = IGNORE_VALUE) -> None:
        """Adds one sample: ``pred`` ``HxW`` bool or logits, ``gt`` ``HxW`` bool or 0/1/255 label map."""
        gt = _as_numpy(gt)
        has_target = bool(np.any(gt)) if gt.dtype == np.bool_ else bool(np.any(gt == 1))
        self.update_flags(prediction_empty=not bool(np.any(foreground(pred))), has_target=has_target)

    def update_flags(self, prediction_empty: bool, has_target: bool) -> None:
        """Adds one sample given whether its prediction is empty and whether its ground truth has a target."""
        if has_target:
            self.target_total += 1
            self.target_nonempty += int(not prediction_empty)
        else:
            self.no_target_total += 1
            self.no_target_empty += int(prediction_empty)

    def merge(self, other: "GeneralizedReferringMeter") -> "GeneralizedReferringMeter":
        self.no_target_empty += other.no_target_empty
        self.no_target_total += other.no_target_total
        self.target_nonempty += other.target_nonempty
        self.target_total += other.target_total
        return self

    @property
    def n_acc(self) -> float:
        return self.no_target_empty / self.no_target_total if self.no_target_total else math.nan

    @property
    def t_acc(self) -> float:
        return self.target_nonempty / self.target_total if self.target_total else math.nan

    def summary(self) -> dict[str, float | int]:
        """``{"n_acc", "t_acc", "no_target_count", "target_count"}``."""
        return {
            "n_acc": self.n_acc,
            "t_acc": self.t_acc,
            "no_target_count": self.no_target_total,
            "target_count": self.target_total,
        }
