"""LISA's training-data tree: which datasets live where, how sub-dataset lists are named, and ``data check``.

The tree (``--dataset-dir``, LISA's ``./dataset``)::

    ade20k/{images,annotations}/training/           sem_seg      ade20k
    cocostuff/train2017/*.png + coco/train2017/      sem_seg      cocostuff
    mapillary/config_v2.0.json, training/...         sem_seg      mapillary
    vlpart/pascal_part/{train.json,VOCdevkit}        sem_seg      pascal_part
    vlpart/paco/annotations/paco_lvis_v1_train.json  sem_seg      paco_lvis     (images under coco/)
    refer_seg/{refcoco,refcoco+,refcocog,refclef,grefcoco}/ + refer_seg/images/...   refer_seg
    llava_dataset/llava_instruct_150k.json           vqa          llava_instruct_150k  (images coco/train2017/)
    reason_seg/ReasonSeg/{train,val,explanatory}     reason_seg   ReasonSeg|train, ReasonSeg|val

Sub-dataset lists are written as LISA writes them (``"ade20k||cocostuff"``) or as YAML lists. A refer entry may
name its refs variant (``refcocog|google``); a reason_seg entry is ``<folder>|<split>`` (``ReasonSeg|train``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError
from . import refer, semantic, vqa
from .reason_seg import IMAGE_SUFFIXES, load_explanations, read_annotation

KINDS = ("sem_seg", "refer_seg", "vqa", "reason_seg")
# LISA's train_ds.py defaults
LISA_SUBSETS = {
    "sem_seg": semantic.LISA_SEM_SEG,
    "refer_seg": ("refclef", "refcoco", "refcoco+", "refcocog"),
    "vqa": vqa.LISA_VQA,
    "reason_seg": ("ReasonSeg|train",),
}
# what `data check` looks for: kind -> every sub-dataset it knows
CHECKED = {
    "sem_seg": semantic.SEM_SEG_DATASETS,
    "refer_seg": refer.REFER_DATASETS,
    "vqa": vqa.LISA_VQA,
    "reason_seg": ("ReasonSeg|train", "ReasonSeg|val"),
}
_MARKERS = {
    "ade20k": "ade20k",
    "cocostuff": "cocostuff",
    "mapillary": "mapillary",
    "pascal_part": "vlpart/pascal_part",
    "paco_lvis": "vlpart/paco",
}


def parse_subsets(value, kind: str) -> list[str]:
    """``None`` -> LISA's default list for ``kind``; ``"a||b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    if value is None:
        return list(LISA_SUBSETS[kind])
    items = value.split("||") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) and i.strip() for i in items) or not items:
        raise InputError(f"{kind} sub-datasets must be a list of names or 'a||b', got {value!r}")
    return [i.strip() for i in items]


def refer_subset(entry: str) -> tuple[str, str | None]:
    """``"refcocog"`` -> ``("refcocog", None)``; ``"refcocog|google"`` -> ``("refcocog", "google")``."""
    name, _, split_by = entry.partition("|")
    return name, (split_by or None)


def reason_seg_folder(dataset_dir: str | Path, entry: str) -> Path:
    """``"ReasonSeg|train"`` -> ``<dataset_dir>/reason_seg/ReasonSeg/train``."""
    folder, sep, split = entry.partition("|")
    if not sep or not folder or not split:
        raise InputError(f"reason_seg sub-dataset {entry!r} should look like 'ReasonSeg|train'")
    return Path(dataset_dir) / "reason_seg" / folder / split


def marker(dataset_dir: Path, kind: str, name: str) -> Path:
    """The file or folder whose presence says a dataset is there at all."""
    if kind == "sem_seg":
        return dataset_dir / _MARKERS.get(name, name)
    if kind == "refer_seg":
        return dataset_dir / "refer_seg" / refer_subset(name)[0]
    if kind == "vqa":
        return dataset_dir / vqa.LLAVA_FOLDER / f"{name}.json"
    return reason_seg_folder(dataset_dir, name)


# ---------------------------------------------------------------------------------------------------- ReasonSeg


def scan_reason_seg(folder: Path, problems: list[str]) -> int:
    """Counts a ReasonSeg folder's usable samples from file names and JSON alone (no image is opened)."""
    groups: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        kind = "json" if suffix == ".json" else "image" if suffix in IMAGE_SUFFIXES else None
        if kind:
            groups.setdefault(path.stem, {"json": [], "image": []})[kind].append(path)
    count = 0
    for stem, files in sorted(groups.items()):
        if not files["json"]:
            problems.append(f"{files['image'][0]}: no annotation {stem}.json beside it")
            continue
        if not files["image"]:
            problems.append(f"{files['json'][0]}: no image {stem}.jpg or {stem}.png beside it")
            continue
        try:
            read_annotation(files["json"][0])
        except InputError as err:
            problems.append(str(err))
            continue
        count += 1
    explanatory = folder.parent / "explanatory" / "train.json"
    if explanatory.is_file():
        try:
            load_explanations(explanatory)
        except InputError as err:
            problems.append(str(err))
    return count


# ---------------------------------------------------------------------------------------------------- check


@dataclass
class DatasetCheck:
    """One dataset's state: ``status`` is ``ok``, ``problems`` (usable, some records skipped), ``unusable`` (it is
    there but cannot be read) or ``missing``."""

    kind: str
    name: str
    status: str
    samples: int | None = None
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_dataset(dataset_dir: str | Path, kind: str, name: str) -> DatasetCheck:
    """Reads one dataset's index files (never an image) and reports what it finds."""
    dataset_dir = Path(dataset_dir)
    where = marker(dataset_dir, kind, name)
    if not where.exists():
        return DatasetCheck(kind, name, "missing", detail=f"not found: {where}")
    problems: list[str] = []
    try:
        samples, detail = _scan(dataset_dir, kind, name, problems)
    except InputError as err:
        return DatasetCheck(kind, name, "unusable", detail=str(err), problems=[str(err)])
    status = "problems" if problems else "ok"
    if not samples:
        status, detail = "unusable", f"{detail}; no usable sample"
    return DatasetCheck(kind, name, status, samples, detail, problems)


def _scan(dataset_dir: Path, kind: str, name: str, problems: list[str]) -> tuple[int, str]:
    if kind == "sem_seg":
        data = semantic.load_sem_seg_dataset(name, dataset_dir, problems=problems)
        if isinstance(data, semantic.LabelMapDataset):
            return len(data), f"image/label pairs, {len(data.classes)} classes"
        return len(data), f"images with parts, {len(data.class_names)} categories"
    if kind == "refer_seg":
        ref_name, split_by = refer_subset(name)
        data = refer.load_refer_dataset(dataset_dir / "refer_seg", ref_name, "train", split_by, problems=problems)
        return len(data), (f"train images ({data.refs_path.name}: {data.num_refs} refs, "
                           f"{data.num_expressions} expressions)")
    if kind == "vqa":
        records = vqa.load_llava_instruct(dataset_dir, name, problems=problems)
        return len(records), "conversations"
    folder = reason_seg_folder(dataset_dir, name)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return scan_reason_seg(folder, problems), "image/JSON pairs"


def check_tree(dataset_dir: str | Path, names: list[str] | None = None) -> list[DatasetCheck]:
    """Every known dataset of LISA's tree (or only ``names``, given as ``kind`` or sub-dataset names)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputError(f"{dataset_dir}: dataset folder not found")
    wanted = []
    for kind, subsets in CHECKED.items():
        for name in subsets:
            if names is None or kind in names or name in names:
                wanted.append((kind, name))
    if names is not None:
        known = {n for pair in wanted for n in pair}
        for name in names:
            if name not in known and name not in KINDS:
                kind = _guess_kind(name)
                if kind is None:
                    known_names = ", ".join(n for subsets in CHECKED.values() for n in subsets)
                    raise InputError(f"unknown dataset {name!r}; known: {known_names}")
                wanted.append((kind, name))
    return [check_dataset(dataset_dir, kind, name) for kind, name in wanted]


def _guess_kind(name: str) -> str | None:
    """Names outside the default lists: ``refcocog|google``, ``ReasonSeg|test``, another LLaVA JSON."""
    base, sep, _ = name.partition("|")
    if base in refer.REFER_DATASETS:
        return "refer_seg"
    if sep:
        return "reason_seg"
    return None


def format_report(dataset_dir: Path, checks: list[DatasetCheck], max_problems: int = 10) -> str:
    lines = [f"dataset dir: {dataset_dir}", f"{'kind':<11} {'dataset':<20} {'status':<9} {'samples':>8}  notes"]
    for check in checks:
        samples = "-" if check.samples is None else str(check.samples)
        lines.append(f"{check.kind:<11} {check.name:<20} {check.status:<9} {samples:>8}  {check.detail}")
    for check in checks:
        if check.problems and check.problems != [check.detail]:
            lines.append(f"{check.name}: {len(check.problems)} problem(s)")
            lines.extend(f"  {p}" for p in check.problems[:max_problems])
            if len(check.problems) > max_problems:
                lines.append(f"  ... and {len(check.problems) - max_problems} more")
    found = [c for c in checks if c.status != "missing"]
    lines.append(
        f"{len(found)} of {len(checks)} dataset(s) found; "
        f"{sum(c.status in ('ok', 'problems') for c in checks)} usable, "
        f"{sum(c.status == 'unusable' for c in checks)} unusable, {sum(c.status == 'missing' for c in checks)} missing"
    )
    return "\n".join(lines)


def report_json(dataset_dir: Path, checks: list[DatasetCheck]) -> str:
    return json.dumps({"dataset_dir": str(dataset_dir), "datasets": [c.to_dict() for c in checks]}, indent=2)
