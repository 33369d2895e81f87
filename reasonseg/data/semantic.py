"""Semantic and part segmentation with class names as prompts: ADE20K, COCO-Stuff, Mapillary Vistas, PASCAL-Part,
PACO-LVIS, in LISA's ``dataset/`` tree (``<root>`` below)::

    <root>/ade20k/images/training/<id>.jpg            <root>/ade20k/annotations/training/<id>.png
    <root>/cocostuff/train2017/<id>.png               <root>/coco/train2017/<id>.jpg           (COCO-Stuff)
    <root>/mapillary/config_v2.0.json                 <root>/mapillary/training/images/<id>.jpg
    <root>/mapillary/training/v2.0/labels/<id>.png
    <root>/vlpart/pascal_part/train.json              <root>/vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>
    <root>/vlpart/paco/annotations/paco_lvis_v1_train.json   <root>/coco/<file_name>       (PACO-LVIS)

**Label-map datasets** (ADE20K, COCO-Stuff, Mapillary): a single-channel PNG of class indices per image.

* ADE20K: value 0 ("other") is ignored, value ``v`` is class ``v - 1`` of the 150 SceneParsing classes
  (:data:`ADE20K_CLASSES`, the first name of each);
* COCO-Stuff (``stuffthingmaps``): value ``v`` is class ``v`` of :data:`COCOSTUFF_CLASSES` (182 names), 255 is
  unlabelled; as in LISA, the classes whose name holds a ``-`` (``wall-brick``, ``floor-other``, ...) are ignored;
* Mapillary Vistas v2.0: value ``v`` is ``labels[v]`` of ``config_v2.0.json``, named by its ``readable`` name in
  lower case; the ``unlabeled`` class is ignored (LISA would ask for "the unlabeled").

**COCO-format part datasets** (PASCAL-Part, PACO-LVIS): categories named ``object:part`` (or ``object`` alone in
PACO); a sense suffix ``_(...)`` is dropped and underscores become spaces (``trash_can:lid`` -> "trash can", "lid").
A part is phrased at random as "trash can lid" or "the lid of the trash can", as LISA does. A class's mask is the
union of all its annotations in the image (LISA takes a single random instance; the union is what a class-name
prompt means).

One sample is one image; a draw asks about up to ``k`` of the classes present (each its own conversation). Missing
partner files, unreadable JSON, malformed categories or segmentations are reported per file, as in
:mod:`reasonseg.data.reason_seg` (``strict`` raises, otherwise skipped and listed in ``problems``). Label PNGs are
only opened when a sample is drawn (:meth:`LabelMapDataset.read_label`), so listing never loads an image.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .problems import ImageFiles, is_coco_image_entry, is_int as _is_int, report_problem as _report
from .refer import read_json_file, segmentation_mask, segmentation_problem

IGNORE = 255


def _names(block: str) -> tuple[str, ...]:
    return tuple(" ".join(name.split()) for name in block.split("|"))


ADE20K_CLASSES = _names("""
    wall | building | sky | floor | tree | ceiling | road | bed | windowpane | grass | cabinet | sidewalk |
    person | earth | door | table | mountain | plant | curtain | chair | car | water | painting | sofa |
    shelf | house | sea | mirror | rug | field | armchair | seat | fence | desk | rock | wardrobe | lamp |
    bathtub | railing | cushion | base | box | column | signboard | chest of drawers | counter | sand | sink |
    skyscraper | fireplace | refrigerator | grandstand | path | stairs | runway | case | pool table | pillow |
    screen door | stairway | river | bridge | bookcase | blind | coffee table | toilet | flower | book | hill |
    bench | countertop | stove | palm | kitchen island | computer | swivel chair | boat | bar |
    arcade machine | hovel | bus | towel | light | truck | tower | chandelier | awning | streetlight | booth |
    television receiver | airplane | dirt track | apparel | pole | land | bannister | escalator | ottoman |
    bottle | buffet | poster | stage | van | ship | fountain | conveyer belt | canopy | washer | plaything |
    swimming pool | stool | barrel | basket | waterfall | tent | bag | minibike | cradle | oven | ball | food |
    step | tank | trade name | microwave | pot | animal | bicycle | lake | dishwasher | screen | blanket |
    sculpture | hood | sconce | vase | traffic light | tray | ashcan | fan | pier | crt screen | plate |
    monitor | bulletin board | shower | radiator | glass | clock | flag
""")
COCOSTUFF_CLASSES = _names("""
    person | bicycle | car | motorcycle | airplane | bus | train | truck | boat | traffic light |
    fire hydrant | street sign | stop sign | parking meter | bench | bird | cat | dog | horse | sheep | cow |
    elephant | bear | zebra | giraffe | hat | backpack | umbrella | shoe | eye glasses | handbag | tie |
    suitcase | frisbee | skis | snowboard | sports ball | kite | baseball bat | baseball glove | skateboard |
    surfboard | tennis racket | bottle | plate | wine glass | cup | fork | knife | spoon | bowl | banana |
    apple | sandwich | orange | broccoli | carrot | hot dog | pizza | donut | cake | chair | couch |
    potted plant | bed | mirror | dining table | window | desk | toilet | door | tv | laptop | mouse | remote |
    keyboard | cell phone | microwave | oven | toaster | sink | refrigerator | blender | book | clock | vase |
    scissors | teddy bear | hair drier | toothbrush | hair brush | banner | blanket | branch | bridge |
    building-other | bush | cabinet | cage | cardboard | carpet | ceiling-other | ceiling-tile | cloth |
    clothes | clouds | counter | cupboard | curtain | desk-stuff | dirt | door-stuff | fence | floor-marble |
    floor-other | floor-stone | floor-tile | floor-wood | flower | fog | food-other | fruit | furniture-other |
    grass | gravel | ground-other | hill | house | leaves | light | mat | metal | mirror-stuff | moss |
    mountain | mud | napkin | net | paper | pavement | pillow | plant-other | plastic | platform |
    playingfield | railing | railroad | river | road | rock | roof | rug | salad | sand | sea | shelf | sky |
    skyscraper | snow | solid-other | stairs | stone | straw | structural-other | table | tent |
    textile-other | towel | tree | vegetable | wall-brick | wall-concrete | wall-other | wall-panel |
    wall-stone | wall-tile | wall-wood | water-other | waterdrops | window-blind | window-other | wood
""")

LABEL_MAP_DATASETS = ("ade20k", "cocostuff", "mapillary")
PART_DATASETS = ("pascal_part", "paco_lvis")
SEM_SEG_DATASETS = LABEL_MAP_DATASETS + PART_DATASETS
# LISA's default sub-dataset list for sem_seg (``--sem_seg_data``)
LISA_SEM_SEG = ("ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary")
MAPILLARY_CONFIG = "config_v2.0.json"
PASCAL_PART_JSON = Path("vlpart/pascal_part/train.json")
PASCAL_PART_IMAGES = Path("vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages")
PACO_LVIS_JSON = Path("vlpart/paco/annotations/paco_lvis_v1_train.json")
PACO_LVIS_IMAGES = Path("coco")


# ---------------------------------------------------------------------------------------------------- label maps


@dataclass
class LabelMapDataset:
    """Image/label-PNG pairs of one dataset and its class names.

    ``value_offset`` 1 means the PNG stores class ``v - 1`` as ``v`` and 0 is ignored (ADE20K); ``ignored`` are class
    ids never asked about (their pixels become ignore).
    """

    name: str
    classes: tuple[str, ...]
    pairs: list[tuple[Path, Path]]
    ignored: frozenset[int] = frozenset()
    value_offset: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def read_label(self, index: int) -> np.ndarray:
        """The ``HxW`` uint8 class-id map of sample ``index`` (255 = ignore). Raises :class:`InputError`."""
        path = self.pairs[index][1]
        try:
            with Image.open(path) as image:
                mode = image.mode
                raw = np.asarray(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path}: unreadable label map ({reason})") from None
        if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
            raise InputError(f"{path}: label map must be a single-channel PNG of class ids, not mode {mode}")
        return self.to_class_ids(raw, path)

    def to_class_ids(self, raw: np.ndarray, path: Path | str = "label") -> np.ndarray:
        raw = raw.astype(np.int64)
        ids = raw - self.value_offset
        ignore = raw == IGNORE
        if self.value_offset:
            ignore |= raw < self.value_offset
        bad = ~ignore & ((ids < 0) | (ids >= len(self.classes)))
        if bad.any():
            value = int(raw[bad][0])
            raise InputError(f"{path}: label value {value} is outside the {len(self.classes)} classes of {self.name}")
        out = np.where(ignore, IGNORE, ids).astype(np.uint8)
        for class_id in self.ignored:
            out[out == class_id] = IGNORE
        return out


def classes_present(label: np.ndarray) -> list[int]:
    """Sorted class ids in a class-id map, ignore (255) left out."""
    return [int(v) for v in np.unique(label) if v != IGNORE]


def _pair(
    images_dir: Path, labels_dir: Path, image_suffix: str, strict, problems, by_label: bool
) -> list[tuple[Path, Path]]:
    """Pairs ``<stem><image_suffix>`` with ``<stem>.png``, listing from the label folder (COCO-Stuff, Mapillary: as
    LISA) or the image folder (ADE20K); a partner that is missing is a problem."""
    pairs = []
    if by_label:
        for label in sorted(labels_dir.glob("*.png")):
            image = images_dir / f"{label.stem}{image_suffix}"
            if not image.is_file():
                _report(f"{label}: no image {image} for this label map", strict, problems)
                continue
            pairs.append((image, label))
    else:
        for image in sorted(images_dir.glob(f"*{image_suffix}")):
            label = labels_dir / f"{image.stem}.png"
            if not label.is_file():
                _report(f"{image}: no label map {label}", strict, problems)
                continue
            pairs.append((image, label))
    return pairs


def _need_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise InputError(f"{path}: {what} folder not found")


def list_ade20k(dataset_dir: str | Path, split: str = "training", strict=False, problems=None) -> LabelMapDataset:
    root = Path(dataset_dir) / "ade20k"
    images, labels = root / "images" / split, root / "annotations" / split
    _need_dir(images, "ADE20K images")
    _need_dir(labels, "ADE20K annotations")
    pairs = _pair(images, labels, ".jpg", strict, problems, by_label=False)
    return LabelMapDataset("ade20k", ADE20K_CLASSES, pairs, value_offset=1)


def list_cocostuff(dataset_dir: str | Path, split: str = "train2017", strict=False, problems=None) -> LabelMapDataset:
    root = Path(dataset_dir)
    labels, images = root / "cocostuff" / split, root / "coco" / split
    _need_dir(labels, "COCO-Stuff label")
    _need_dir(images, "COCO images")
    pairs = _pair(images, labels, ".jpg", strict, problems, by_label=True)
    ignored = frozenset(i for i, name in enumerate(COCOSTUFF_CLASSES) if "-" in name)
    return LabelMapDataset("cocostuff", COCOSTUFF_CLASSES, pairs, ignored=ignored)


def read_mapillary_classes(config_path: str | Path) -> tuple[str, ...]:
    config_path = Path(config_path)
    config = read_json_file(config_path, "Mapillary config")
    labels = config.get("labels") if isinstance(config, dict) else None
    if not isinstance(labels, list) or not labels:
        raise InputError(f"{config_path}: needs a non-empty 'labels' list")
    names = []
    for index, label in enumerate(labels):
        if not (isinstance(label, dict) and isinstance(label.get("readable"), str)):
            raise InputError(f"{config_path}: labels[{index}] needs a string 'readable' name")
        names.append(label["readable"].strip().lower())
    return tuple(names)


def list_mapillary(dataset_dir: str | Path, split: str = "training", strict=False, problems=None) -> LabelMapDataset:
    root = Path(dataset_dir) / "mapillary"
    classes = read_mapillary_classes(root / MAPILLARY_CONFIG)
    labels, images = root / split / "v2.0" / "labels", root / split / "images"
    _need_dir(labels, "Mapillary v2.0 label")
    _need_dir(images, "Mapillary image")
    pairs = _pair(images, labels, ".jpg", strict, problems, by_label=True)
    ignored = frozenset(i for i, name in enumerate(classes) if name == "unlabeled")
    return LabelMapDataset("mapillary", classes, pairs, ignored=ignored)


# ---------------------------------------------------------------------------------------------------- part datasets


def clean_category(name: str) -> str:
    """``glass_(drink_container)`` -> ``glass``; ``trash_can`` -> ``trash can``."""
    name = name.strip().split("_(")[0]
    return " ".join(name.replace("_", " ").split())


def part_class_name(raw: str, needs_part: bool) -> str | tuple[str, str]:
    """A category name -> ``object`` or ``(object, part)``. Raises ValueError when malformed."""
    pieces = raw.strip().split(":")
    if len(pieces) > 2 or (needs_part and len(pieces) != 2):
        expected = "'object:part'" if needs_part else "'object:part' or 'object'"
        raise ValueError(f"category name {raw!r} should look like {expected}")
    cleaned = [clean_category(piece) for piece in pieces]
    if not all(cleaned):
        raise ValueError(f"category name {raw!r} has an empty object or part")
    return cleaned[0] if len(cleaned) == 1 else (cleaned[0], cleaned[1])


def part_prompt(name: str | tuple[str, str], rng: random.Random) -> str:
    """How a class is asked about: ``object``, or a part as "object part" / "the part of the object" (even odds)."""
    if isinstance(name, str):
        return name
    obj, part = name
    return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"


@dataclass
class PartImage:
    image_id: int
    path: Path
    height: int
    width: int
    categories: dict[int, list[int]] = field(default_factory=dict)  # category id -> annotation ids


@dataclass
class PartDataset:
    name: str
    json_path: Path
    class_names: dict[int, str | tuple[str, str]]
    images: list[PartImage]
    segmentations: dict[int, object]

    def __len__(self) -> int:
        return len(self.images)

    def mask(self, image: PartImage, category_id: int) -> np.ndarray:
        out = np.zeros((image.height, image.width), dtype=np.uint8)
        for ann_id in image.categories[category_id]:
            out |= segmentation_mask(self.segmentations[ann_id], image.height, image.width)
        return out


def load_coco_parts(
    json_path: str | Path,
    image_root: str | Path,
    name: str,
    needs_part: bool,
    strict: bool = False,
    problems: list[str] | None = None,
    check_images: bool = True,
) -> PartDataset:
    """A COCO-format part dataset: images with at least one usable annotation of a well-named category."""
    json_path, image_root = Path(json_path), Path(image_root)
    data = read_json_file(json_path, "COCO JSON")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise InputError(f"{json_path}: must be an object with 'images', 'annotations' and 'categories' lists")
    class_names: dict[int, str | tuple[str, str]] = {}
    for index, category in enumerate(data["categories"]):
        if not (isinstance(category, dict) and _is_int(category.get("id")) and isinstance(category.get("name"), str)):
            _report(f"{json_path}: categories[{index}] needs an integer 'id' and a string 'name'", strict, problems)
            continue
        try:
            class_names[category["id"]] = part_class_name(category["name"], needs_part)
        except ValueError as err:
            _report(f"{json_path}: categories[{index}]: {err}", strict, problems)
    infos: dict[int, dict] = {}
    for index, info in enumerate(data["images"]):
        if not is_coco_image_entry(info):
            _report(f"{json_path}: images[{index}] needs integer 'id', 'height', 'width' and a 'file_name'",
                    strict, problems)
            continue
        infos[info["id"]] = info
    by_image: dict[int, PartImage] = {}
    segmentations: dict[int, object] = {}
    image_files = ImageFiles(image_root, json_path, check_images, strict, problems)
    for index, ann in enumerate(data["annotations"]):
        where = f"{json_path}: annotations[{index}]"
        if not (isinstance(ann, dict) and _is_int(ann.get("id")) and _is_int(ann.get("image_id"))
                and _is_int(ann.get("category_id")) and "segmentation" in ann):
            _report(f"{where} needs integer 'id', 'image_id', 'category_id' and a 'segmentation'", strict, problems)
            continue
        where = f"{json_path}: annotation {ann['id']}"
        info = infos.get(ann["image_id"])
        if info is None:
            _report(f"{where}: image {ann['image_id']} is not in 'images'", strict, problems)
            continue
        if ann["category_id"] not in class_names:
            _report(f"{where}: category {ann['category_id']} is unknown or malformed", strict, problems)
            continue
        problem = segmentation_problem(ann["segmentation"], info["height"], info["width"])
        if problem:
            _report(f"{where}: {problem}", strict, problems)
            continue
        image_id = info["id"]
        if image_id not in by_image:
            path = image_files.path(info)
            if path is None:
                continue
            by_image[image_id] = PartImage(image_id, path, info["height"], info["width"])
        by_image[image_id].categories.setdefault(ann["category_id"], []).append(ann["id"])
        segmentations[ann["id"]] = ann["segmentation"]
    return PartDataset(name, json_path, class_names, [by_image[k] for k in sorted(by_image)], segmentations)


def load_pascal_part(dataset_dir: str | Path, strict=False, problems=None, check_images=True) -> PartDataset:
    root = Path(dataset_dir)
    return load_coco_parts(root / PASCAL_PART_JSON, root / PASCAL_PART_IMAGES, "pascal_part", True,
                           strict, problems, check_images)


def load_paco_lvis(dataset_dir: str | Path, strict=False, problems=None, check_images=True) -> PartDataset:
    root = Path(dataset_dir)
    return load_coco_parts(root / PACO_LVIS_JSON, root / PACO_LVIS_IMAGES, "paco_lvis", False,
                           strict, problems, check_images)


def load_sem_seg_dataset(name: str, dataset_dir: str | Path, strict=False, problems=None, check_images=True):
    """One of :data:`SEM_SEG_DATASETS` by name -> a :class:`LabelMapDataset` or :class:`PartDataset`."""
    if name == "ade20k":
        return list_ade20k(dataset_dir, strict=strict, problems=problems)
    if name == "cocostuff":
        return list_cocostuff(dataset_dir, strict=strict, problems=problems)
    if name == "mapillary":
        return list_mapillary(dataset_dir, strict=strict, problems=problems)
    if name == "pascal_part":
        return load_pascal_part(dataset_dir, strict, problems, check_images)
    if name == "paco_lvis":
        return load_paco_lvis(dataset_dir, strict, problems, check_images)
    raise InputError(f"unknown semantic segmentation dataset {name!r}; known: {', '.join(SEM_SEG_DATASETS)}")


# ---------------------------------------------------------------------------------------------------- drawing


@dataclass
class ClassDraw:
    """What one draw asks about: ``prompts[i]`` (class names, lower case) and ``masks[i]`` (``HxW`` 0/1 uint8)."""

    image_path: Path
    prompts: list[str]
    masks: np.ndarray


def draw_classes(dataset, index: int, rng: random.Random, k: int) -> ClassDraw | None:
    """Up to ``k`` classes present in sample ``index`` (sampled without replacement); None when it has none."""
    if isinstance(dataset, LabelMapDataset):
        label = dataset.read_label(index)
        present = classes_present(label)
        if not present:
            return None
        chosen = rng.sample(present, min(k, len(present)))
        masks = np.stack([(label == c).astype(np.uint8) for c in chosen])
        return ClassDraw(dataset.pairs[index][0], [dataset.classes[c].lower() for c in chosen], masks)
    image = dataset.images[index]
    present = sorted(image.categories)
    if not present:
        return None
    chosen = rng.sample(present, min(k, len(present)))
    prompts = [part_prompt(dataset.class_names[c], rng).lower() for c in chosen]
    masks = np.stack([dataset.mask(image, c) for c in chosen])
    return ClassDraw(image.path, prompts, masks)


def tidy_question(question: str) -> str:
    """"segment the the lid of ..." -> "segment the lid of ..." (a part phrased with its own article)."""
    return re.sub(r"\bthe the\b", "the", question)
