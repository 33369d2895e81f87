"""Referring segmentation: refCOCO, refCOCO+, refCOCOg, refCLEF and gRefCOCO from their standard files.

On disk (LISA's ``dataset/refer_seg/`` tree; ``<root>`` below is that folder)::

    <root>/refcoco/refs(unc).p        <root>/refcoco/instances.json
    <root>/refcoco+/refs(unc).p       <root>/refcoco+/instances.json
    <root>/refcocog/refs(umd).p       <root>/refcocog/instances.json     (also refs(google).p)
    <root>/refclef/refs(unc).p        <root>/refclef/instances.json      (also refs(berkeley).p)
    <root>/grefcoco/grefs(unc).json   <root>/grefcoco/instances.json     (or grefs(unc).p)
    <root>/images/mscoco/images/train2014/<file_name>     images of the refCOCO family and gRefCOCO
    <root>/images/saiapr_tc-12/<file_name>                images of refCLEF

The refs file is a list of ``{"ref_id", "ann_id", "image_id", "category_id", "split", "sentences": [{"sent",
...}, ...]}``; in gRefCOCO ``ann_id`` is a list, ``[-1]`` meaning "no object matches" (an all-zero mask).
``instances.json`` is COCO-style: ``images`` (``id``, ``file_name``, ``height``, ``width``), ``annotations`` (``id``,
``image_id``, ``segmentation``: polygons ``[[x0, y0, x1, y1, ...], ...]`` or an RLE ``{"size", "counts"}``).

The ``.p`` files are Python pickles holding nothing but lists, dicts, strings and numbers. They are read with an
unpickler that refuses every class except a few plain builtin containers, so a tampered file cannot run code.

One *sample* is one image that has at least one usable ref in the requested split (as LISA draws them); its
expressions are every sentence of every ref of that image, each pointing at its ref's object(s). A sample's mask for
an expression is the union of its annotations' masks (pycocotools decoding; several polygons of one annotation are
merged). Problems -- unreadable or wrongly shaped files, a ref naming an unknown image or annotation, a polygon with
fewer than 3 points, an RLE whose size is not its image's, a ref without sentences, a missing image file -- are one
line ``<file>: <reason>`` each; ``strict=True`` raises the first as :class:`~reasonseg.errors.InputError`, otherwise
the ref (or the image) is skipped and the line goes to ``problems`` (or :func:`warnings.warn` when none is given).
"""

from __future__ import annotations

import builtins
import io
import json
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import InputError
from .problems import ImageFiles, is_coco_image_entry, is_int as _is_int, report_problem as _report

# name -> (folder, refs file(s) tried in order, image folder relative to the refer_seg root)
COCO_IMAGES = Path("images/mscoco/images/train2014")
CLEF_IMAGES = Path("images/saiapr_tc-12")
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc", "grefcoco": "unc"}
REFER_DATASETS = tuple(DEFAULT_SPLIT_BY)
_SAFE_BUILTINS = frozenset({"set", "frozenset", "list", "dict", "tuple", "str", "bytes", "int", "float", "bool"})


def refs_candidates(name: str, split_by: str | None = None) -> list[str]:
    """File names of a dataset's refs file, in the order they are looked for."""
    split_by = split_by or DEFAULT_SPLIT_BY.get(name, "unc")
    if name == "grefcoco":
        return [f"grefs({split_by}).json", f"grefs({split_by}).p"]
    return [f"refs({split_by}).p", f"refs({split_by}).json"]


def image_folder(refer_root: str | Path, name: str) -> Path:
    return Path(refer_root) / (CLEF_IMAGES if name == "refclef" else COCO_IMAGES)


# ---------------------------------------------------------------------------------------------------- safe pickles


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any global other than a few builtin container types is refused."""

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"it references {module}.{name}; only plain lists, dicts, strings and numbers are read"
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it uses persistent ids; only plain data is read")


def load_data_pickle(path: str | Path):
    """A pickle of plain Python data (lists, dicts, str, numbers), never running code from it.

    Python 2 pickles (the refs files were written by Python 2) are read with their byte strings decoded as UTF-8
    (Latin-1 when that fails). Raises :class:`InputError` ``"<file>: <reason>"``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    last = None
    for encoding in ("utf-8", "latin1"):
        try:
            return _DataOnlyUnpickler(io.BytesIO(raw), encoding=encoding).load()
        except UnicodeDecodeError as err:
            last = err
        except pickle.UnpicklingError as err:
            raise InputError(f"{path}: refused pickle ({err})") from None
        except Exception as err:  # truncated/corrupt pickles raise EOFError, ValueError, KeyError, ...
            raise InputError(f"{path}: not a readable pickle ({type(err).__name__}: {_first_line(err)})") from None
    raise InputError(f"{path}: not a readable pickle ({_first_line(last)})")


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_json_file(path: str | Path, what: str = "JSON"):
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: unreadable {what} ({_first_line(err)})") from None


def read_refs_file(path: str | Path) -> list:
    """The refs list of a ``refs(*).p`` / ``grefs(*).json`` file (validated to be a list of objects)."""
    path = Path(path)
    refs = load_data_pickle(path) if path.suffix == ".p" else read_json_file(path, "refs JSON")
    if not isinstance(refs, list):
        raise InputError(f"{path}: refs must be a list of ref objects, got {type(refs).__name__}")
    return refs


# ---------------------------------------------------------------------------------------------------- masks


def segmentation_problem(segmentation, height: int, width: int) -> str | None:
    """Why a COCO ``segmentation`` cannot be rasterised on an ``height x width`` image, or None when it can."""
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    if not isinstance(segmentation, list) or not segmentation:
        return "segmentation is empty or not a list of polygons / an RLE"
    if all(isinstance(part, dict) for part in segmentation):
        for part in segmentation:
            if problem := _rle_problem(part, height, width):
                return problem
        return None
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in polygon
        ):
            return "a polygon must be a flat list of numbers [x0, y0, x1, y1, ...]"
        if len(polygon) % 2:
            return f"a polygon has an odd number of coordinates ({len(polygon)})"
        if len(polygon) < 6:
            return f"a polygon has {len(polygon) // 2} point(s); at least 3 are needed"
    return None


def _rle_problem(rle: dict, height: int, width: int) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2):
        return "an RLE needs 'size': [height, width]"
    if list(size) != [height, width]:
        return f"an RLE of size {size[1]}x{size[0]} on a {width}x{height} image"
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            return "an uncompressed RLE's counts must be non-negative integers adding up to height * width"
    elif not isinstance(counts, (str, bytes)) or not counts:
        return "an RLE needs 'counts' (a list of run lengths or a compressed string)"
    else:
        try:
            runs = compressed_rle_counts(counts.encode("ascii") if isinstance(counts, str) else counts)
        except (ValueError, UnicodeEncodeError):
            return "an RLE's compressed counts string is corrupt"
        if any(r < 0 for r in runs) or sum(runs) != height * width:
            return "an RLE's compressed counts do not add up to height * width"
    return None


def compressed_rle_counts(data: bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string (each run: 5-bit groups offset by 48, bit 0x20 = more groups,
    bit 0x10 of the last group = negative; runs after the second are stored as differences to the run two back).
    Used to validate a string before pycocotools decodes it (it does not check)."""
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift = 0, 0
        while True:
            if position >= len(data):
                raise ValueError("truncated")
            group = data[position] - 48
            if not 0 <= group < 64:
                raise ValueError("character out of range")
            position += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    value |= -1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """``HxW`` uint8 0/1 mask of a COCO ``segmentation`` (polygons, an RLE, or a list of RLEs), via pycocotools."""
    if isinstance(segmentation, dict):
        parts = [segmentation]
    elif segmentation and all(isinstance(part, dict) for part in segmentation):
        parts = list(segmentation)
    else:
        parts = mask_utils.frPyObjects(segmentation, height, width)
    rles = []
    for rle in parts:
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        rles.append(rle)
    with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's copy-keyword deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        merged = mask_utils.merge(rles, intersect=False) if len(rles) > 1 else rles[0]
        return np.ascontiguousarray(mask_utils.decode(merged), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ReferExpression:
    """One sentence and the annotation ids it refers to (empty for gRefCOCO's "no target")."""

    text: str
    ann_ids: tuple[int, ...]
    ref_id: int | None = None


@dataclass
class ReferImage:
    image_id: int
    path: Path
    height: int
    width: int
    expressions: list[ReferExpression] = field(default_factory=list)


@dataclass
class ReferDataset:
    """One referring dataset's usable samples in one split; ``annotations`` maps ann id -> its ``segmentation``."""

    name: str
    split_by: str
    split: str
    refs_path: Path
    images: list[ReferImage]
    annotations: dict[int, object]
    num_refs: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_expressions(self) -> int:
        return sum(len(image.expressions) for image in self.images)

    def mask(self, image: ReferImage, expression: ReferExpression) -> np.ndarray:
        """``HxW`` uint8 0/1: the union of the expression's annotations (all zero for "no target")."""
        out = np.zeros((image.height, image.width), dtype=np.uint8)
        for ann_id in expression.ann_ids:
            out |= segmentation_mask(self.annotations[ann_id], image.height, image.width)
        return out


def split_matches(ref_split: str, wanted: str) -> bool:
    """The refer API's split rule: ``testA``/``testB``/``testC`` match any test split holding that letter, ``test``
    every test split, anything else exactly."""
    if wanted in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and wanted[-1] in ref_split
    if wanted == "test":
        return "test" in ref_split
    return ref_split == wanted


def find_refs_file(dataset_folder: Path, name: str, split_by: str | None = None) -> Path | None:
    for candidate in refs_candidates(name, split_by):
        if (dataset_folder / candidate).is_file():
            return dataset_folder / candidate
    return None


def load_refer_dataset(
    refer_root: str | Path,
    name: str,
    split: str = "train",
    split_by: str | None = None,
    strict: bool = False,
    problems: list[str] | None = None,
    check_images: bool = True,
) -> ReferDataset:
    """Reads ``<refer_root>/<name>/`` (refs file + ``instances.json``) into the samples of one split.

    Args:
        refer_root: LISA's ``dataset/refer_seg`` folder.
        name: ``refcoco``, ``refcoco+``, ``refcocog``, ``refclef`` or ``grefcoco`` (any other folder name works too,
            with COCO images).
        split: ``train``, ``val``, ``test``, ``testA``, ``testB``, ... (the refer API's rule:
            :func:`split_matches`).
        split_by: refs file variant; LISA's defaults: ``umd`` for refCOCOg, ``unc`` otherwise.
        strict, problems: as in :mod:`reasonseg.data.reason_seg`.
        check_images: look each image file up on disk (a stat, no read) and skip the missing ones.

    A missing folder, refs file or ``instances.json``, or one of the wrong shape, always raises.
    """
    refer_root = Path(refer_root)
    split_by = split_by or DEFAULT_SPLIT_BY.get(name, "unc")
    folder = refer_root / name
    if not folder.is_dir():
        raise InputError(f"{folder}: referring dataset folder not found")
    refs_path = find_refs_file(folder, name, split_by)
    if refs_path is None:
        raise InputError(f"{folder}: no {' or '.join(refs_candidates(name, split_by))}")
    instances_path = folder / "instances.json"
    refs = read_refs_file(refs_path)
    instances = read_json_file(instances_path, "instances JSON")
    if not isinstance(instances, dict) or not all(
        isinstance(instances.get(key), list) for key in ("images", "annotations")
    ):
        raise InputError(f"{instances_path}: must be an object with 'images' and 'annotations' lists")

    images: dict[int, dict] = {}
    for index, info in enumerate(instances["images"]):
        if not is_coco_image_entry(info):
            _report(f"{instances_path}: images[{index}] needs integer 'id', 'height', 'width' and a 'file_name'",
                    strict, problems)
            continue
        images[info["id"]] = info
    annotations: dict[int, dict] = {}
    for index, ann in enumerate(instances["annotations"]):
        if not (
            isinstance(ann, dict) and _is_int(ann.get("id")) and _is_int(ann.get("image_id")) and "segmentation" in ann
        ):
            _report(f"{instances_path}: annotations[{index}] needs integer 'id', 'image_id' and a 'segmentation'",
                    strict, problems)
            continue
        annotations[ann["id"]] = ann

    image_root = image_folder(refer_root, name)
    by_image: dict[int, ReferImage] = {}
    good_segmentations: dict[int, object] = {}
    checked_anns: dict[int, str | None] = {}
    image_files = ImageFiles(image_root, refs_path, check_images, strict, problems)
    num_refs = 0
    for index, ref in enumerate(refs):
        where = f"{refs_path}: ref {index}"
        if not isinstance(ref, dict):
            _report(f"{where}: must be an object", strict, problems)
            continue
        if not isinstance(ref.get("split"), str):
            _report(f"{where}: needs a string 'split'", strict, problems)
            continue
        if not split_matches(ref["split"], split):
            continue
        where = f"{refs_path}: ref {ref.get('ref_id', index)}"
        image_id = ref.get("image_id")
        if not _is_int(image_id):
            _report(f"{where}: needs an integer 'image_id'", strict, problems)
            continue
        info = images.get(image_id)
        if info is None:
            _report(f"{where}: image {image_id} is not in {instances_path.name}", strict, problems)
            continue
        ann_ids = ref.get("ann_id")
        ann_list = ann_ids if isinstance(ann_ids, list) else [ann_ids]
        if not ann_list or not all(_is_int(a) for a in ann_list):
            _report(f"{where}: 'ann_id' must be an integer or a list of integers", strict, problems)
            continue
        if -1 in ann_list:  # gRefCOCO: no object matches the expression
            if len(ann_list) != 1:
                _report(f"{where}: 'ann_id' mixes -1 (no target) with annotation ids", strict, problems)
                continue
            ann_list = []
        reason = None
        for ann_id in ann_list:
            if ann_id not in checked_anns:
                ann = annotations.get(ann_id)
                if ann is None:
                    checked_anns[ann_id] = f"annotation {ann_id} is not in {instances_path.name}"
                elif ann["image_id"] != image_id:
                    checked_anns[ann_id] = f"annotation {ann_id} belongs to image {ann['image_id']}, not {image_id}"
                else:
                    problem = segmentation_problem(ann["segmentation"], info["height"], info["width"])
                    checked_anns[ann_id] = f"annotation {ann_id}: {problem}" if problem else None
            reason = reason or checked_anns[ann_id]
        if reason:
            _report(f"{where}: {reason}", strict, problems)
            continue
        sentences = ref.get("sentences")
        texts = []
        if isinstance(sentences, list):
            texts = [s["sent"].strip() for s in sentences if isinstance(s, dict) and isinstance(s.get("sent"), str)]
            texts = [t for t in texts if t]
        if not texts:
            _report(f"{where}: no sentences (a list of {{'sent': '...'}})", strict, problems)
            continue
        if image_id not in by_image:
            path = image_files.path(info)
            if path is None:
                continue
            by_image[image_id] = ReferImage(image_id, path, info["height"], info["width"])
        ref_id = ref.get("ref_id") if _is_int(ref.get("ref_id")) else None
        by_image[image_id].expressions.extend(ReferExpression(t, tuple(ann_list), ref_id) for t in texts)
        for ann_id in ann_list:
            good_segmentations[ann_id] = annotations[ann_id]["segmentation"]
        num_refs += 1
    return ReferDataset(
        name=name,
        split_by=split_by,
        split=split,
        refs_path=refs_path,
        images=[by_image[k] for k in sorted(by_image)],
        annotations=good_segmentations,
        num_refs=num_refs,
    )
