"""On-disk output: ReasonSeg-format image/json pairs, plus qa.jsonl and instances.jsonl, and the bundled example.

Layout of ``write_reasonseg_split(out_dir, split, ...)``::

    <out_dir>/<split>/<split>_<seed>_<q>.png    the scene (every q of a seed: hard links to one file where possible)
    <out_dir>/<split>/<split>_<seed>_<q>.json   ReasonSeg json of query q of that scene
    <out_dir>/<split>/qa.jsonl                  text-only question/answer pairs and captions, one per line
    <out_dir>/<split>/instances.jsonl           one line per object: point, box and polygon (toy-SAM stage)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ...errors import InputError
from .queries import FAMILIES, Query, ground
from .sample import Sample, generate_sample, sample_from_scene, split_seeds
from .scene import BackgroundSpec, ObjectSpec, SceneObject, render_scene

POLYGON_MIN_IOU = 0.98  # simplification stops short of this; the tests hold every polygon to >= 0.97
_EPSILONS = (1.0, 0.7, 0.5)  # cv2.approxPolyDP tolerances tried, coarsest first; then the raw contour


# --------------------------------------------------------------------------------------------------- polygons
def polygon_to_mask(points, height: int, width: int) -> np.ndarray:
    """Rasterise a polygon the way ReasonSeg readers (LISA) do: outline plus fill, on integer pixel coordinates."""
    mask = np.zeros((height, width), dtype=np.uint8)
    pts = np.asarray(points, dtype=np.int32).reshape(1, -1, 2)
    if pts.shape[1] == 0:
        return mask.astype(bool)
    cv2.polylines(mask, pts, True, 1, 1)
    cv2.fillPoly(mask, pts, 1)
    return mask.astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_to_polygon(mask: np.ndarray, offset: tuple[int, int] = (0, 0),
                    min_iou: float = POLYGON_MIN_IOU) -> list[list[int]]:
    """The largest outer contour of a bool mask, simplified as far as keeps IoU >= ``min_iou`` with the mask when
    re-rasterised. ``offset`` (x, y) is added to the points (for masks cropped out of a larger image)."""
    u8 = np.pad(mask.astype(np.uint8), 1)  # a border so that contours touching the crop edge close properly
    contours, _ = cv2.findContours(u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    contour = max(contours, key=cv2.contourArea)
    h, w = u8.shape
    best = contour
    for eps in _EPSILONS:
        approx = cv2.approxPolyDP(contour, eps, True)
        if len(approx) >= 3 and mask_iou(polygon_to_mask(approx.reshape(-1, 2), h, w), u8 > 0) >= min_iou:
            best = approx
            break
    pts = best.reshape(-1, 2) - 1 + np.asarray(offset, dtype=np.int32)
    return pts.tolist()


def object_polygon(obj: SceneObject) -> list[list[int]]:
    """Polygon of an object's visible mask in image coordinates."""
    return mask_to_polygon(obj.crop, (obj.bbox[0], obj.bbox[1]))


# ---------------------------------------------------------------------------------------------------- records
def sample_id(split: str, seed: int, query_index: int) -> str:
    return f"{split}_{seed}_{query_index}"


def reasonseg_record(sample: Sample, query: Query, split: str | None = None, query_index: int | None = None,
                     polygons: dict[int, list] | None = None) -> dict:
    """The ReasonSeg json of one query: ``text``, ``is_sentence``, ``shapes`` (one "target" polygon per target, in
    ``targets`` order, i.e. the order of the answer's [SEG]s; empty when there is no target) plus extra fields
    ReasonSeg readers ignore."""
    polygons = {} if polygons is None else polygons
    shapes = []
    for t in query.targets:
        if t not in polygons:
            polygons[t] = object_polygon(sample.objects[t])
        shapes.append({"label": "target", "points": polygons[t], "shape_type": "polygon"})
    record = {
        "text": [query.text, *query.alternatives],
        "is_sentence": query.is_sentence,
        "shapes": shapes,
        "family": query.family,
        "kind": query.kind,
        "answer": query.answer,
        "targets": list(query.targets),
        "reason": query.reason,
        "objects": [o.to_dict() for o in sample.objects],
        "width": sample.width,
        "height": sample.height,
        "background": sample.scene.background.kind,
        "seed": sample.seed,
    }
    if split is not None:
        record["split"] = split
    if query_index is not None:
        record["query_index"] = query_index
    return record


def _png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write a fresh file (never through an existing hard link, which would change its other names too)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _link_or_write(source: Path, target: Path, data: bytes) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(data)


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass
class WriteSummary:
    split: str
    directory: Path
    scenes: int = 0  # scenes with at least one query written
    skipped_scenes: int = 0  # scenes where none of the requested families applied
    records: int = 0  # image/json pairs
    families: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    qa_pairs: int = 0
    instances: int = 0


def write_reasonseg_split(out_dir, split: str, num: int, start: int = 0, families=None) -> WriteSummary:
    """Write samples ``start`` .. ``start + num - 1`` of ``split`` (seeds from ``split_seeds``) under
    ``<out_dir>/<split>/``: one image + json per (scene, query), and qa.jsonl / instances.jsonl for those scenes
    (both rewritten by every call). ``families`` keeps only those query families; a scene that then has no query
    is skipped entirely (it is counted in ``skipped_scenes``)."""
    seeds = split_seeds(split, num, start)
    if families is not None:
        families = [families] if isinstance(families, str) else list(families)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise InputError(f"unknown query families {', '.join(map(repr, unknown))}; known: {', '.join(FAMILIES)}")
    directory = Path(out_dir) / split
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output directory {directory}: {err.strerror or err}") from None
    summary = WriteSummary(split, directory)
    with open(directory / "qa.jsonl", "w", encoding="utf-8") as qa_file, \
            open(directory / "instances.jsonl", "w", encoding="utf-8") as inst_file:
        for seed in seeds:
            sample = generate_sample(seed)
            chosen = [(q_index, q) for q_index, q in enumerate(sample.queries)
                      if families is None or q.family in families]
            if not chosen:
                summary.skipped_scenes += 1
                continue
            png = _png_bytes(sample.image)
            polygons: dict[int, list] = {}
            first_image = None
            for q_index, query in chosen:
                name = sample_id(split, seed, q_index)
                if first_image is None:
                    first_image = f"{name}.png"
                    _replace_bytes(directory / first_image, png)
                else:  # the same pixels: a hard link where the file system allows, else a copy
                    _link_or_write(directory / first_image, directory / f"{name}.png", png)
                record = reasonseg_record(sample, query, split, q_index, polygons)
                _replace_bytes(directory / f"{name}.json", _dumps(record).encode("utf-8"))
                summary.records += 1
                summary.families[query.family] += 1
                summary.kinds[f"{query.family}/{query.kind}"] += 1
            summary.scenes += 1
            for pair in sample.qa:
                qa_file.write(_dumps({"image": first_image, "seed": seed, **pair.to_dict()}) + "\n")
                summary.qa_pairs += 1
            for obj in sample.objects:
                if obj.index not in polygons:
                    polygons[obj.index] = object_polygon(obj)
                inst_file.write(_dumps({
                    "image": first_image, "seed": seed, "object": obj.index, "shape": obj.shape,
                    "colour": obj.colour, "size": obj.size, "point": list(obj.point), "box": list(obj.bbox),
                    "polygon": polygons[obj.index], "area": obj.area,
                }) + "\n")
                summary.instances += 1
    return summary


# ----------------------------------------------------------------------------------------------- the example
EXAMPLE_QUERY = "Which shape could roll away? Please output segmentation mask."


def example_sample() -> Sample:
    """The bundled example: 320x240, a red circle, a blue square and a yellow triangle, well apart, plain background."""
    objects = [
        ObjectSpec("circle", "red", "large", 80.0, (70.0, 120.0)),
        ObjectSpec("square", "blue", "medium", 64.0, (175.0, 105.0)),
        ObjectSpec("triangle", "yellow", "medium", 52.0, (275.0, 150.0)),
    ]
    scene = render_scene(320, 240, objects, BackgroundSpec("plain", (200, 198, 190)))
    sample = sample_from_scene(scene, seed=0)
    query = Query("reasoning", "could_roll", EXAMPLE_QUERY, True, ground("Sure, it is [SEG].", scene, (0,)), (0,))
    sample.queries = [query]
    return sample


def write_example(directory) -> tuple[Path, Path]:
    """Write ``shapes.png`` and ``shapes.json`` (its ReasonSeg json, the "could roll" query) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sample = example_sample()
    png, js = directory / "shapes.png", directory / "shapes.json"
    png.write_bytes(_png_bytes(sample.image))
    record = reasonseg_record(sample, sample.queries[0])
    lines = [f" {json.dumps(key)}: {json.dumps(value, separators=(', ', ': '))}" for key, value in record.items()]
    js.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return png, js
