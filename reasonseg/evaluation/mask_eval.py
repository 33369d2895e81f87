"""Scoring a folder of predicted masks against a ReasonSeg-format ground-truth folder (the `eval-masks` job).

Predictions: ``<id>.npy`` (an ``HxW`` array: bool, 0/1 integers, or float logits -- foreground where ``> 0``) or
``<id>.png`` (foreground where any colour channel is nonzero; palette PNGs by palette index). Other files are
ignored. Ground truth: a ReasonSeg folder read by :mod:`reasonseg.data.reason_seg`, one mask per sample.

Every usable ground-truth sample is scored, so ``count`` always equals the number of those samples: a prediction
that is missing, unreadable, of the wrong size or ambiguous (both ``.npy`` and ``.png``) is scored as an empty mask
and reported. A prediction with no ground truth is reported and ignored, and ground-truth problems are reported as
the reader reports them. Each problem is one line ``"<file>: <reason>"``; with ``strict=True`` the first one
raises :class:`~reasonseg.errors.InputError` instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.reason_seg import IMAGE_SUFFIXES, list_samples, load_label_map
from ..errors import InputError
from .metrics import SegmentationMeter, foreground

PREDICTION_SUFFIXES = (".npy", ".png")


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_prediction(path: str | Path) -> np.ndarray:
    """An ``.npy`` or ``.png`` prediction file -> ``HxW`` bool mask. Raises :class:`InputError` naming the file."""
    path = Path(path)
    is_npy = path.suffix.lower() == ".npy"
    try:
        if is_npy:
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as image:
                image.load()
                array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: unreadable prediction ({_one_line(err)})") from None
    if is_npy:
        if array.ndim != 2:
            raise InputError(f"{path}: expected an HxW array, got shape {tuple(array.shape)}")
        try:
            return foreground(array)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
    if array.ndim == 3:  # colour PNG: foreground wherever a colour channel is lit (alpha is not a colour)
        array = array[..., : 3 if array.shape[2] >= 3 else 1].any(axis=2)
    return array != 0


def _find_predictions(pred_dir: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(pred_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in PREDICTION_SUFFIXES and not path.name.startswith("."):
            found.setdefault(path.stem, []).append(path)
    return found


def evaluate_mask_folder(pred_dir: str | Path, gt_dir: str | Path, strict: bool = False) -> dict:
    """Scores ``pred_dir`` against the ReasonSeg folder ``gt_dir`` with LISA's gIoU and cIoU.

    Returns:
        ``{"giou", "ciou", "count", "per_sample": {id: {"intersection", "union", "iou"}},
        "by_query_kind": {"short"|"long": {"giou", "ciou", "count"}}, "problems": [line, ...]}`` -- ``short`` holds
        the samples whose ``is_sentence`` is false, ``long`` the others (LISA's short/long query split).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction directory not found")
    problems: list[str] = []

    def report(message: str) -> None:
        if strict:
            raise InputError(message)
        problems.append(message)

    samples = list_samples(gt_dir, strict=strict, problems=problems)
    if not samples:
        raise InputError(f"{gt_dir}: no usable ReasonSeg samples (an <id>.jpg|png with its <id>.json)")
    predictions = _find_predictions(pred_dir)

    overall = SegmentationMeter()
    by_kind = {"short": SegmentationMeter(), "long": SegmentationMeter()}
    for sample in samples:
        height, width = sample.image_size
        label_map = load_label_map(sample)
        pred = np.zeros((height, width), dtype=bool)
        paths = predictions.get(sample.id, [])
        if not paths:
            report(f"{pred_dir / (sample.id + '.npy')}: missing prediction for {sample.json_path.name} "
                   "(.npy or .png); scored as an empty mask")
        elif len(paths) > 1:
            report(f"{paths[0]}: ambiguous, {' and '.join(p.name for p in paths)} both exist; scored as an empty mask")
        else:
            try:
                loaded = read_prediction(paths[0])
            except InputError as err:
                report(f"{err}; scored as an empty mask")
            else:
                if loaded.shape != (height, width):
                    report(f"{paths[0]}: prediction is {loaded.shape[1]}x{loaded.shape[0]} (WxH) but image "
                           f"{sample.image_path.name} is {width}x{height}; scored as an empty mask")
                else:
                    pred = loaded
        overall.update(pred, label_map, key=sample.id)
        by_kind["long" if sample.is_sentence else "short"].update(pred, label_map)

    # predictions for ids that exist in gt_dir but were unusable are covered by that sample's own problem line
    gt_ids = {p.stem for p in gt_dir.iterdir() if p.suffix.lower() in (".json", *IMAGE_SUFFIXES)}
    for stem, paths in predictions.items():
        if stem not in gt_ids:
            for path in paths:
                report(f"{path}: stray prediction, {gt_dir} has no sample {stem!r}; ignored")

    return {
        "giou": overall.giou,
        "ciou": overall.ciou,
        "count": overall.count,
        "per_sample": overall.per_key,
        "by_query_kind": {
            kind: {"giou": meter.giou, "ciou": meter.ciou, "count": meter.count}
            for kind, meter in by_kind.items()
            if meter.count
        },
        "problems": problems,
    }
