"""Reader for the ReasonSeg on-disk format (LISA's benchmark): a folder of ``<id>.jpg|png`` + ``<id>.json``.

Each JSON holds::

    {"text": "a query" | ["a query", "another phrasing", ...],
     "is_sentence": true,                      # long "reasoning" query (true) or short phrase (false)
     "shapes": [{"label": "target" | "ignore" | "flag", "points": [[x, y], ...], "shape_type": "polygon"}, ...]}

A variant spelling is accepted per shape: ``category`` instead of ``label`` and a flat ``polygon`` list
``[x0, y0, x1, y1, ...]`` instead of ``points``.

Ground truth is a *label map*, ``HxW`` uint8 with 0 = background, 1 = target, 255 = ignore (left out of the
metrics), rendered as LISA renders it:

* shapes labelled ``flag`` (any case) are skipped; a label containing ``ignore`` paints 255, any other label 1;
* each shape's points are cast to int32 (truncated) and drawn with ``cv2.polylines`` (closed, thickness 1) plus
  ``cv2.fillPoly``; its area is the number of pixels that drawing covers inside the image;
* shapes are painted largest area first, so a smaller shape painted later wins where shapes overlap (an ``ignore``
  region inside a target stays ignored, a target inside an ignore region stays target). Equal areas keep LISA's
  order (its reversed ``argsort``): the shape listed *first* is painted last.

Two deliberate departures, both reported: a shape with ``shape_type: "rectangle"`` and two points is filled as the
axis-aligned box they span (LISA would draw only its diagonal), and a polygon with fewer than 3 points is skipped
(LISA would draw it as a line or a dot). Other ``shape_type`` values (circle, line, point, ...) are problems.
Coordinates refer to the image as displayed, i.e. after its EXIF orientation is applied (as ``cv2.imread`` does).

Problems -- a JSON without an image, an image without a JSON, unreadable JSON or image, missing ``text`` /
``is_sentence`` / ``shapes``, a malformed shape, a polygon with fewer than 3 points or lying entirely outside the
image -- are each one line ``<file>: <reason>``. With ``strict=True`` the first one raises
:class:`~reasonseg.errors.InputError`; otherwise a sample whose files cannot be used is skipped, a bad polygon is
left out of its sample's mask, and the line is appended to the caller's ``problems`` list (or, when no list is
given, emitted with :func:`warnings.warn`).

Explanatory answers (LISA's ``explanatory/train.json``: a list of ``{"image": "<id>.jpg", "query": ...,
"outputs": "..."}``) are attached as ``ReasonSegSample.explanation`` (the ``outputs`` text) when that file sits in
``<folder>/explanatory/`` or in ``<folder>/../explanatory/`` (LISA's layout: ``ReasonSeg/{train,val,explanatory}``),
or when its path is passed explicitly. Only the ``outputs`` text is kept; entries are matched by image file name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .problems import report_problem as _report, one_line as _one_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BACKGROUND_VALUE, TARGET_VALUE, IGNORE_VALUE = 0, 1, 255
# labeled_mask.png maps the label values to grey levels that are easy to tell apart by eye
VIEW_LEVELS = {BACKGROUND_VALUE: 0, TARGET_VALUE: 255, IGNORE_VALUE: 128}
EXPLANATORY_RELATIVE_PATHS = (Path("explanatory/train.json"), Path("../explanatory/train.json"))
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class Shape:
    """One annotated region: ``label`` as written, ``points`` an ``Nx2`` float array of ``(x, y)`` pixels."""

    label: str
    points: np.ndarray
    shape_type: str | None = None

    @property
    def value(self) -> int:
        """The label-map value this shape paints: 255 for labels containing "ignore", else 1 (LISA's rule)."""
        return IGNORE_VALUE if "ignore" in self.label.lower() else TARGET_VALUE


@dataclass
class ReasonSegAnnotation:
    """The parsed contents of one ``<id>.json`` (``flag`` shapes already dropped)."""

    queries: list[str]
    is_sentence: bool
    shapes: list[Shape]


@dataclass
class ReasonSegSample:
    """One image with its queries. ``image_size`` is ``(height, width)`` after EXIF orientation."""

    id: str
    image_path: Path
    json_path: Path
    queries: list[str]
    is_sentence: bool
    explanation: str | None = None
    image_size: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------------- annotation


def _read_json(path: Path):
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252")  # some ReasonSeg files are cp1252; LISA falls back to it too
    return json.loads(text)


def _parse_points(shape: dict, index: int) -> np.ndarray:
    if "points" in shape:
        points = shape["points"]
        if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
            raise ValueError(f"shape {index}: 'points' must be a list of [x, y] pairs")
        flat = [coordinate for point in points for coordinate in point]
    elif "polygon" in shape:
        flat = shape["polygon"]
        if not isinstance(flat, list) or len(flat) % 2:
            raise ValueError(f"shape {index}: 'polygon' must be a flat list [x0, y0, x1, y1, ...] of even length")
    else:
        raise ValueError(f"shape {index}: has neither 'points' nor 'polygon'")
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in flat):
        raise ValueError(f"shape {index}: coordinates must be finite numbers")
    return np.asarray(flat, dtype=np.float64).reshape(-1, 2)


def _parse_shape(shape, index: int) -> Shape | None:
    if not isinstance(shape, dict):
        raise ValueError(f"shape {index}: must be an object")
    label = shape.get("label", shape.get("category"))
    if not isinstance(label, str):
        raise ValueError(f"shape {index}: needs a string 'label' (or 'category')")
    if label.lower() == "flag":  # deprecated marks, never part of the mask
        return None
    shape_type = shape.get("shape_type")
    points = _parse_points(shape, index)
    if shape_type == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    elif shape_type not in (None, "polygon", "rectangle"):
        raise ValueError(f"shape {index}: unsupported shape_type {shape_type!r} (polygon or rectangle)")
    return Shape(label=label, points=points, shape_type=shape_type)


def read_annotation(json_path: str | Path) -> ReasonSegAnnotation:
    """Parses one ReasonSeg JSON. Raises :class:`InputError` ``"<file>: <reason>"`` when it is unusable."""
    json_path = Path(json_path)
    try:
        data = _read_json(json_path)
    except FileNotFoundError:
        raise InputError(f"{json_path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{json_path}: unreadable JSON ({_one_line(err)})") from None
    try:
        if not isinstance(data, dict):
            raise ValueError("top level must be an object")
        if "text" not in data:
            raise ValueError("missing 'text'")
        queries = [data["text"]] if isinstance(data["text"], str) else data["text"]
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ValueError("'text' must be a string or a list of strings")
        if not queries or not any(q.strip() for q in queries):
            raise ValueError("'text' is empty")
        if "is_sentence" not in data:
            raise ValueError("missing 'is_sentence'")
        if not isinstance(data["is_sentence"], bool):
            raise ValueError("'is_sentence' must be true or false")
        if "shapes" not in data:
            raise ValueError("missing 'shapes'")
        if not isinstance(data["shapes"], list):
            raise ValueError("'shapes' must be a list")
        shapes = [s for i, raw in enumerate(data["shapes"]) if (s := _parse_shape(raw, i)) is not None]
    except ValueError as err:
        raise InputError(f"{json_path}: {err}") from None
    return ReasonSegAnnotation(queries=queries, is_sentence=data["is_sentence"], shapes=shapes)


# ---------------------------------------------------------------------------------------------------- rendering


def _draw(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    polygon = [points.astype(np.int32)]  # truncation toward zero, as np.array(points, dtype=np.int32) in LISA
    cv2.polylines(canvas, polygon, True, value, 1)
    cv2.fillPoly(canvas, polygon, value)


def shape_area(shape: Shape, height: int, width: int) -> int:
    """Pixels of an ``height x width`` image that the shape's drawing covers (0 when it lies outside)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    _draw(canvas, shape.points, 1)
    return int(np.count_nonzero(canvas))


def shape_problem(shape: Shape, height: int, width: int) -> str | None:
    """Why a shape cannot be painted on an ``height x width`` image, or None when it can."""
    if len(shape.points) < 3:
        return f"polygon labelled {shape.label!r} has {len(shape.points)} point(s); at least 3 are needed"
    if shape_area(shape, height, width) == 0:
        return f"polygon labelled {shape.label!r} lies entirely outside the {width}x{height} image"
    return None


def render_label_map(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """Paints shapes into an ``HxW`` uint8 label map (0 background, 1 target, 255 ignore), largest area first.

    Polygons with fewer than 3 points are skipped (see the module docstring).
    """
    paintable = [shape for shape in shapes if len(shape.points) >= 3]
    areas = np.array([shape_area(shape, height, width) for shape in paintable], dtype=np.int64)
    order = np.argsort(areas, kind="stable")[::-1]  # LISA's argsort()[::-1]: ties paint the earlier-listed last
    label_map = np.zeros((height, width), dtype=np.uint8)
    for index in order:
        _draw(label_map, paintable[index].points, paintable[index].value)
    return label_map


def load_label_map(
    sample_or_json_path: ReasonSegSample | str | Path,
    height: int | None = None,
    width: int | None = None,
) -> np.ndarray:
    """The ``HxW`` uint8 label map (0/1/255) of a sample or of a JSON file.

    ``height``/``width`` default to the sample's image size; they are required when a JSON path is given.
    """
    if isinstance(sample_or_json_path, ReasonSegSample):
        json_path = sample_or_json_path.json_path
        if height is None and width is None and sample_or_json_path.image_size is not None:
            height, width = sample_or_json_path.image_size
    else:
        json_path = Path(sample_or_json_path)
    if height is None or width is None:
        raise InputError(f"{json_path}: the image height and width are needed to render its mask")
    return render_label_map(read_annotation(json_path).shapes, int(height), int(width))


def target_mask(label_map: np.ndarray) -> np.ndarray:
    """``HxW`` bool: the target pixels (value 1) of a label map."""
    return np.asarray(label_map) == TARGET_VALUE


def ignore_mask(label_map: np.ndarray) -> np.ndarray:
    """``HxW`` bool: the ignored pixels (value 255) of a label map."""
    return np.asarray(label_map) == IGNORE_VALUE


# ---------------------------------------------------------------------------------------------------- listing


def image_size(image_path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image as displayed (EXIF orientation applied), read from its header only."""
    image_path = Path(image_path)
    try:
        with Image.open(image_path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{image_path}: unreadable image ({_one_line(err)})") from None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return height, width


def load_explanations(json_path: str | Path) -> dict[str, str]:
    """LISA's ``explanatory/train.json`` -> ``{image file name: outputs text}``."""
    json_path = Path(json_path)
    try:
        items = _read_json(json_path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{json_path}: unreadable explanatory JSON ({_one_line(err)})") from None
    if not isinstance(items, list):
        raise InputError(f"{json_path}: explanatory JSON must be a list of {{'image', 'query', 'outputs'}} objects")
    explanations = {}
    for index, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("outputs"), str)):
            raise InputError(f"{json_path}: entry {index} needs string 'image' and 'outputs'")
        explanations[item["image"]] = item["outputs"]
    return explanations


def _find_explanatory(folder: Path) -> Path | None:
    for relative in EXPLANATORY_RELATIVE_PATHS:
        candidate = folder / relative
        if candidate.is_file():
            return candidate
    return None


def _group_files(folder: Path) -> dict[str, dict[str, list[Path]]]:
    groups: dict[str, dict[str, list[Path]]] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        kind = "json" if suffix == ".json" else "image" if suffix in IMAGE_SUFFIXES else None
        if kind:
            groups.setdefault(path.stem, {"json": [], "image": []})[kind].append(path)
    return groups


def list_samples(
    folder: str | Path,
    strict: bool = False,
    problems: list[str] | None = None,
    explanatory: str | Path | None = None,
) -> list[ReasonSegSample]:
    """The usable samples of a ReasonSeg folder, sorted by id.

    Args:
        folder: directory of ``<id>.jpg|jpeg|png`` + ``<id>.json`` (other files and sub-folders are ignored).
        strict: raise :class:`InputError` at the first problem instead of skipping.
        problems: when given, each problem line ``"<file>: <reason>"`` is appended here (and not warned).
        explanatory: path of an explanatory JSON; by default ``explanatory/train.json`` is looked for in the
            folder and in its parent.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory of ReasonSeg samples")
    explanations: dict[str, str] = {}
    explanatory_path = Path(explanatory) if explanatory is not None else _find_explanatory(folder)
    if explanatory_path is not None:
        try:
            explanations = load_explanations(explanatory_path)
        except InputError as err:
            _report(str(err), strict, problems)

    samples = []
    for sample_id, files in sorted(_group_files(folder).items()):
        if not files["json"]:
            _report(f"{files['image'][0]}: no annotation {sample_id}.json beside it", strict, problems)
            continue
        json_path = files["json"][0]
        if not files["image"]:
            _report(f"{json_path}: no image {sample_id}.jpg or {sample_id}.png beside it", strict, problems)
            continue
        if len(files["image"]) > 1:
            names = ", ".join(sorted(p.name for p in files["image"]))
            _report(f"{json_path}: several images share its id ({names})", strict, problems)
            continue
        image_path = files["image"][0]
        try:
            annotation = read_annotation(json_path)
            height, width = image_size(image_path)
        except InputError as err:
            _report(str(err), strict, problems)
            continue
        for shape in annotation.shapes:
            reason = shape_problem(shape, height, width)
            if reason:  # the sample stays; that polygon adds nothing to its mask
                _report(f"{json_path}: {reason}", strict, problems)
        samples.append(
            ReasonSegSample(
                id=sample_id,
                image_path=image_path,
                json_path=json_path,
                queries=annotation.queries,
                is_sentence=annotation.is_sentence,
                explanation=explanations.get(image_path.name),
                image_size=(height, width),
            )
        )
    return samples


# ---------------------------------------------------------------------------------------------------- rendering to disk


def render_masks(
    folder: str | Path,
    out_dir: str | Path,
    strict: bool = False,
    problems: list[str] | None = None,
) -> list[Path]:
    """Writes each sample's ground truth as PNGs under ``out_dir/<id>/``; returns those sample directories.

    * ``labeled_mask.png``: the label map for viewing -- background 0, target 255, ignore 128 (grey);
    * ``target_mask.png``: target pixels 255, others 0;
    * ``ignore_mask.png``: ignored pixels 255, others 0.

    ``strict`` and ``problems`` behave as in :func:`list_samples`.
    """
    out_dir = Path(out_dir)
    written = []
    for sample in list_samples(folder, strict=strict, problems=problems):
        label_map = load_label_map(sample)
        view = np.zeros_like(label_map)
        for value, level in VIEW_LEVELS.items():
            view[label_map == value] = level
        sample_dir = out_dir / sample.id
        sample_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(view).save(sample_dir / "labeled_mask.png")
        Image.fromarray(target_mask(label_map).astype(np.uint8) * 255).save(sample_dir / "target_mask.png")
        Image.fromarray(ignore_mask(label_map).astype(np.uint8) * 255).save(sample_dir / "ignore_mask.png")
        written.append(sample_dir)
    return written
