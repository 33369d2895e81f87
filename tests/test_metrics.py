"""gIoU / cIoU / N-acc / T-acc on masks whose numbers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reasonseg.data.reason_seg import Shape, render_label_map
from reasonseg.errors import InputError
from reasonseg.evaluation.metrics import (
    GeneralizedReferringMeter,
    SegmentationMeter,
    iou_from,
    mask_intersection_union,
)


def lisa_iou(intersection: int, union: int) -> float:
    return 1.0 if union == 0 else intersection / (union + 1e-5)


def box(height, width, x0, y0, x1, y1, value=1, dtype=np.uint8):
    """``height x width`` array with ``value`` on the inclusive box ``[x0..x1] x [y0..y1]``."""
    array = np.zeros((height, width), dtype=dtype)
    array[y0 : y1 + 1, x0 : x1 + 1] = value
    return array


def test_ignored_pixels_leave_both_intersection_and_union():
    gt = box(4, 4, 0, 0, 1, 1)  # target: 2x2 top-left
    gt[3, :] = 255  # ignore: the bottom row
    pred = box(4, 4, 0, 0, 2, 1, dtype=bool)  # 3x2: covers the target and 2 background pixels
    pred[3, :] = True  # all inside the ignore row: must not count
    assert mask_intersection_union(pred, gt) == (4, 6)
    assert iou_from(4, 6) == pytest.approx(4 / (6 + 1e-5), abs=0) and iou_from(4, 6) < 4 / 6


def test_empty_target_scores_one_only_with_an_empty_prediction():
    gt = np.zeros((3, 3), dtype=np.uint8)
    assert mask_intersection_union(np.zeros((3, 3), bool), gt) == (0, 0)
    assert iou_from(0, 0) == 1.0
    pred = box(3, 3, 0, 0, 0, 1, dtype=bool)  # 2 pixels
    assert mask_intersection_union(pred, gt) == (0, 2) and iou_from(0, 2) == 0.0
    gt[:, 0] = 255  # the same 2 pixels now fall in an ignore region: the union is empty again
    assert mask_intersection_union(pred, gt) == (0, 0)


def test_logits_bool_integers_and_tensors_agree():
    gt = box(2, 3, 0, 0, 1, 0)  # target: (0,0), (1,0)
    logits = np.array([[2.5, -1.0, 0.3], [0.0, -3.0, -0.1]], dtype=np.float32)  # > 0 at (0,0) and (2,0); 0.0 is off
    assert mask_intersection_union(logits, gt) == (1, 3)
    assert mask_intersection_union(logits > 0, gt) == (1, 3)
    assert mask_intersection_union((logits > 0).astype(np.uint8) * 255, gt) == (1, 3)
    assert mask_intersection_union(torch.from_numpy(logits), torch.from_numpy(gt)) == (1, 3)
    assert mask_intersection_union(logits, gt.astype(bool)) == (1, 3)  # a bool ground truth ignores nothing


def test_bad_ground_truth_and_shapes_are_input_errors():
    with pytest.raises(InputError, match=r"values \[2, 7\]"):
        mask_intersection_union(np.zeros((2, 2), bool), np.array([[0, 2], [7, 255]], dtype=np.uint8))
    with pytest.raises(InputError, match=r"prediction shape \(2, 3\) differs from ground-truth shape \(3, 2\)"):
        mask_intersection_union(np.zeros((2, 3), bool), np.zeros((3, 2), np.uint8))
    with pytest.raises(InputError, match="invalid counts"):
        iou_from(3, 2)


def test_overlapping_target_and_ignore_the_smaller_shape_wins():
    big_target = Shape("target", np.array([[0, 0], [5, 0], [5, 3], [0, 3]], float))  # 6x4 = 24 px
    small_ignore = Shape("ignore", np.array([[1, 1], [2, 1], [2, 2], [1, 2]], float))  # 2x2 = 4 px
    # listed smallest first: painting order comes from the areas, not the listing
    label_map = render_label_map([small_ignore, big_target], 5, 7)
    expected = box(5, 7, 0, 0, 5, 3)
    expected[1:3, 1:3] = 255
    assert np.array_equal(label_map, expected)
    pred = np.ones((5, 7), dtype=bool)  # everything: 35 px, 4 of them ignored
    assert mask_intersection_union(pred, label_map) == (20, 31)

    big_ignore = Shape("ignore", np.array([[0, 0], [5, 0], [5, 3], [0, 3]], float))
    small_target = Shape("target", np.array([[1, 1], [2, 1], [2, 2], [1, 2]], float))
    label_map = render_label_map([small_target, big_ignore], 5, 7)
    # 24 - 4 = 20 ignored pixels; the target keeps its 4; 35 - 20 = 15 pixels count
    assert (label_map == 255).sum() == 20 and (label_map == 1).sum() == 4
    assert mask_intersection_union(pred, label_map) == (4, 15)


def test_meter_over_several_masks():
    meter = SegmentationMeter()
    gt_a = box(4, 4, 0, 0, 1, 1)
    gt_a[3, :] = 255
    pred_a = box(4, 4, 0, 0, 2, 1, dtype=bool)
    # one sample with two masks (keys per mask), then two single-mask samples
    assert meter.update(pred_a, gt_a, key="s1/0") == pytest.approx(4 / (6 + 1e-5))
    assert meter.update(np.zeros((4, 4), bool), np.zeros((4, 4), np.uint8), key="s1/1") == 1.0
    meter.update_counts(0, 3, key="s2")
    meter.update_counts(2, 2)
    expected_giou = (4 / (6 + 1e-5) + 1.0 + 0.0 + 2 / (2 + 1e-5)) / 4
    assert meter.count == 4
    assert meter.giou == pytest.approx(expected_giou, rel=1e-12)
    assert meter.ciou == pytest.approx(6 / 11, rel=1e-9)
    assert meter.per_key["s1/0"] == {"intersection": 4, "union": 6, "iou": pytest.approx(4 / (6 + 1e-5))}
    assert set(meter.per_key) == {"s1/0", "s1/1", "s2"}
    assert meter.summary() == {"giou": meter.giou, "ciou": meter.ciou, "count": 4, "intersection": 6, "union": 11}
    with pytest.raises(InputError, match="'s2' was added twice"):
        meter.update_counts(1, 1, key="s2")


def test_empty_meter_and_all_empty_unions():
    meter = SegmentationMeter()
    assert meter.count == 0 and math.isnan(meter.giou) and math.isnan(meter.ciou)
    meter.update_counts(0, 0)
    meter.update_counts(0, 0)
    assert meter.giou == 1.0 and meter.ciou == 1.0


def test_merging_shards_equals_one_meter():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(12):
        gt = rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(9, 7), p=[0.5, 0.35, 0.15])
        pairs.append((rng.normal(size=(9, 7)), gt))
    whole = SegmentationMeter()
    shards = [SegmentationMeter(), SegmentationMeter(), SegmentationMeter()]
    for index, (pred, gt) in enumerate(pairs):
        whole.update(pred, gt, key=str(index))
        shards[index % 3].update(pred, gt, key=str(index))
    merged = shards[2].merge(shards[0]).merge(shards[1])
    assert merged.giou == whole.giou and merged.ciou == whole.ciou  # exactly, whatever the order
    assert (merged.count, merged.intersection, merged.union) == (whole.count, whole.intersection, whole.union)
    assert merged.per_key == whole.per_key
    with pytest.raises(InputError, match="must not overlap"):
        merged.merge(shards[0])


def _histogram_reference(pred_logits: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """LISA's counting, restated: ignored pixels copied into the prediction, then 2-bin histograms."""
    output = torch.from_numpy((pred_logits > 0).astype(np.int64)).float().flatten()
    target = torch.from_numpy(gt.astype(np.int64)).float().flatten()
    output[target == 255] = 255
    intersection = torch.histc(output[output == target], bins=2, min=0, max=1)
    union = torch.histc(output, bins=2, min=0, max=1) + torch.histc(target, bins=2, min=0, max=1) - intersection
    return int(intersection[1]), int(union[1])


def test_counts_match_the_histogram_formulation_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(20):
        gt = rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(13, 11), p=[0.6, 0.3, 0.1])
        logits = rng.normal(size=(13, 11))
        assert mask_intersection_union(logits, gt) == _histogram_reference(logits, gt)


def test_generalized_referring_accuracies():
    meter = GeneralizedReferringMeter()
    no_target = np.zeros((3, 3), np.uint8)
    ignore_only = np.full((3, 3), 255, np.uint8)  # ignored pixels are not a target
    with_target = box(3, 3, 0, 0, 0, 0)
    empty, some = np.full((3, 3), -1.0), box(3, 3, 2, 2, 2, 2, dtype=bool)
    meter.update(empty, no_target)  # correct rejection
    meter.update(empty, ignore_only)  # correct rejection
    meter.update(some, no_target)  # false alarm
    for _ in range(3):
        meter.update(some, with_target)  # found (even though misplaced: T-acc only asks non-empty)
    meter.update(empty, with_target)  # wrongly rejected
    assert meter.n_acc == pytest.approx(2 / 3) and meter.t_acc == pytest.approx(3 / 4)
    assert meter.summary() == {"n_acc": meter.n_acc, "t_acc": meter.t_acc, "no_target_count": 3, "target_count": 4}

    other = GeneralizedReferringMeter()
    other.update_flags(prediction_empty=False, has_target=False)
    assert math.isnan(other.t_acc) and other.n_acc == 0.0
    meter.merge(other)
    assert meter.n_acc == pytest.approx(2 / 4) and meter.t_acc == pytest.approx(3 / 4)
