"""Writing predicted masks in the formats people use: COCO RLE, boxes, PNG masks, LISA-style overlays and JSON.

Conventions:

* A mask is a 2-D array; any nonzero value is foreground (threshold probability maps before passing them).
* RLE is COCO's compressed RLE from pycocotools, with ``counts`` as ``str`` so the record is JSON-serialisable.
* A box is COCO's ``[x, y, width, height]`` in whole pixels: the mask's leftmost column, top row, and extents
  (``max - min + 1``); ``[0, 0, 0, 0]`` for an empty mask.
* Overlays blend ``image * (1 - alpha) + colour * alpha`` on mask pixels and truncate to integers, exactly as LISA's
  ``chat.py`` does (its numpy assignment into a ``uint8`` array truncates); pixels outside every mask are untouched.
"""

from __future__ import annotations

import colorsys
import io
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from ..errors import InputError
from ..processing.image_io import load_image

# One colour per mask, in order; the first is LISA's red. Beyond these, colours come from golden-angle hues.
MASK_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 114, 255),
    (0, 200, 0),
    (255, 200, 0),
    (170, 0, 255),
    (0, 220, 220),
    (255, 110, 0),
    (255, 0, 170),
    (120, 80, 40),
    (128, 128, 128),
)

LISA_MASK_COLOR = MASK_COLORS[0]
MASKED_IMAGE_JPEG_QUALITY = 95  # what cv2.imwrite, used by LISA's chat.py, writes by default


def mask_to_rle(mask: np.ndarray) -> dict:
    """A 2-D mask -> COCO compressed RLE ``{"size": [h, w], "counts": str}``."""
    binary = _as_binary_mask(mask)
    rle = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE -> ``HxW`` bool array. ``counts`` may be ``str`` or ``bytes`` (compressed) or a list (uncompressed)."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"not a COCO RLE: expected {{'size': [h, w], 'counts': ...}}, got {_short(rle)}") from None
    if isinstance(counts, list):
        compressed = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, (str, bytes)):
        compressed = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise InputError(f"RLE counts must be a str, bytes or a list of ints, not {type(counts).__name__}")
    with warnings.catch_warnings():
        # pycocotools' decoder trips numpy 2's __array__(copy=...) deprecation; harmless and not ours to fix
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return coco_mask.decode(compressed).astype(bool)


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, width, height]`` of the mask's foreground; ``[0, 0, 0, 0]`` when it is empty."""
    binary = _as_binary_mask(mask)
    rows = np.flatnonzero(binary.any(axis=1))
    if rows.size == 0:
        return [0, 0, 0, 0]
    cols = np.flatnonzero(binary.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def mask_area(mask: np.ndarray) -> int:
    """The number of foreground pixels."""
    return int(np.count_nonzero(_as_binary_mask(mask)))


def mask_record(mask: np.ndarray, score: float | None = None) -> dict:
    """``{"rle", "area", "bbox"}`` for one mask, plus ``"score"`` when given (``None`` if the score is NaN/inf)."""
    record = {"rle": mask_to_rle(mask), "area": mask_area(mask), "bbox": mask_bbox(mask)}
    if score is not None:
        score = float(score)
        record["score"] = score if np.isfinite(score) else None
    return record


def mask_color(index: int) -> tuple[int, int, int]:
    """The overlay colour of mask ``index``: ``MASK_COLORS`` first, then distinct golden-angle hues."""
    if index < len(MASK_COLORS):
        return MASK_COLORS[index]
    hue = ((index - len(MASK_COLORS)) * 0.618033988749895 + 0.1) % 1.0
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def overlay_masks(
    image,
    masks: list[np.ndarray],
    alpha: float = 0.5,
    colors: list[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """The image with mask ``i`` blended in ``colors[i]`` (default :func:`mask_color`), as an ``HxWx3`` uint8 array.

    ``image`` is anything :func:`~reasonseg.processing.image_io.load_image` accepts (typically a PIL image or an RGB
    array); each mask must have the image's ``HxW``. Where masks overlap, later masks are blended over earlier ones.
    With ``alpha=0.5`` and red, mask pixels become ``uint8(image * 0.5 + [255, 0, 0] * 0.5)``, as in LISA.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay alpha must be between 0 and 1, not {alpha}")
    if colors is not None and len(colors) < len(masks):
        raise InputError(f"{len(colors)} overlay colours for {len(masks)} masks; give one colour per mask")
    rgb = np.asarray(load_image(image), dtype=np.uint8)
    canvas = rgb.copy()
    for index, mask in enumerate(masks):
        binary = _as_binary_mask(mask)
        if binary.shape != rgb.shape[:2]:
            raise InputError(f"mask {index} is {binary.shape[0]}x{binary.shape[1]} but the image is "
                             f"{rgb.shape[0]}x{rgb.shape[1]} (HxW); pass masks at the image's size")
        colour = np.asarray(colors[index] if colors is not None else mask_color(index), dtype=np.float64)
        blended = canvas[binary].astype(np.float64) * (1.0 - alpha) + colour * alpha
        canvas[binary] = blended.astype(np.uint8)  # truncation, as LISA's assignment into uint8
    return canvas


def save_prediction_files(image, masks: list[np.ndarray], out_dir, name: str) -> list[Path]:
    """Write LISA's per-mask files into ``out_dir`` (created if needed) and return their paths in order.

    For each mask ``i``: ``<name>_mask_<i>.png``, a single-channel PNG with 0 for background and 255 for the mask,
    then ``<name>_masked_img_<i>.jpg``, the image with that one mask blended in LISA's red (quality 95).
    Each file is written atomically, so a reader never sees a half-written file.
    """
    _check_name(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(load_image(image), dtype=np.uint8)
    written: list[Path] = []
    for index, mask in enumerate(masks):
        binary = _as_binary_mask(mask)
        mask_path = out_dir / f"{name}_mask_{index}.png"
        _write_atomically(mask_path, _encode(Image.fromarray(binary.astype(np.uint8) * 255, mode="L"), "PNG"))
        overlay = overlay_masks(rgb, [binary], alpha=0.5, colors=[LISA_MASK_COLOR])
        overlay_path = out_dir / f"{name}_masked_img_{index}.jpg"
        jpeg = _encode(Image.fromarray(overlay, mode="RGB"), "JPEG", quality=MASKED_IMAGE_JPEG_QUALITY)
        _write_atomically(overlay_path, jpeg)
        written += [mask_path, overlay_path]
    return written


def write_prediction_json(path, prompt: str, answer: str, masks: list, extra: dict | None = None) -> Path:
    """Write ``{"prompt", "answer", "masks": [{"rle", "area", "bbox"(, "score")}], **extra}`` to ``path`` atomically.

    ``masks`` holds arrays (turned into :func:`mask_record` s) or records already made, e.g. with scores:
    ``[mask_record(m, s) for m, s in zip(masks, scores)]``. ``extra`` adds top-level keys (``seg_forced``, the model
    name, ...); numpy scalars and arrays in it are written as plain numbers and lists. Returns the path.
    """
    path = Path(path)
    records = [m if isinstance(m, dict) else mask_record(m) for m in masks]
    document = {"prompt": prompt, "answer": answer, "masks": records}
    for key, value in (extra or {}).items():
        if key in document:
            raise InputError(f"extra key {key!r} would overwrite the record's own {key!r}; rename it")
        document[key] = value
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, text.encode("utf-8"))
    return path


def _as_binary_mask(mask) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InputError(f"a mask must be a 2-D HxW array, got shape {tuple(array.shape)}")
    return array != 0 if array.dtype != bool else array


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InputError(f"output name {name!r} must be a plain file stem (no directories); e.g. image_name(path)")


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then ``os.replace`` it into place."""
    # a unique name opened with "xb" (not tempfile.mkstemp, whose 0600 mode would stick to the output file)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
