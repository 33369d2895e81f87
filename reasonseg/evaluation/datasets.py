"""What an evaluation scores: ``(image, query, ground truth)`` items read from a dataset named ``KIND:PATH``.

Kinds built so far:

* ``reasonseg``: a ReasonSeg folder (LISA's benchmark; :mod:`reasonseg.data.reason_seg`). ``PATH`` is the folder of
  ``<id>.jpg`` + ``<id>.json``, or the ``ReasonSeg`` root together with a split (``--split val`` reads
  ``PATH/val``). As LISA's validation does, only the **first** query of each image is an item unless
  ``all_queries`` is set. Ground truth: the label map (1 target, 255 ignore, 0 background).
* ``custom``: the JSONL format of :mod:`reasonseg.data.custom`. A record with one ``mask``: each prompt is a question
  about that mask (first prompt only unless ``all_queries``). A record with several ``masks`` and as many prompts:
  one item per ``(prompt_i, mask_i)``; with a single prompt: one item whose target is the union of the masks.
  A prompt ending in ``?`` or ``.`` is a sentence (a "long" query), anything else a phrase (a "short" one) -- the
  rule the custom training data uses. Ground truth has no ignore region.

* ``refcoco``, ``refcoco+``, ``refcocog``, ``grefcoco``: the referring datasets as LISA's ``dataset/refer_seg/``
  tree holds them (:mod:`reasonseg.data.refer`). ``PATH`` is that ``refer_seg`` folder (or the dataset's own folder
  inside it); ``--split`` defaults to ``val``. As LISA's validation does, **every** sentence of every referring
  expression of each image is an item (``all_queries`` changes nothing), lower-cased and stripped as LISA does, and
  asked with the short-query template. Ground truth: the union of the expression's annotations (no ignore region);
  a gRefCOCO "no target" expression has an all-zero target.

Every item has a ``uid`` (``<id>#<query index>``) unique in its dataset, and ``in_protocol``: whether LISA's
validation scores it (the first query of a ReasonSeg image or custom target; every refer sentence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

REFER_KINDS = ("refcoco", "refcoco+", "refcocog", "grefcoco")
BUILT_KINDS = ("reasonseg", "custom") + REFER_KINDS
PLANNED_KINDS: tuple[str, ...] = ()
KINDS = BUILT_KINDS + PLANNED_KINDS
DATA_SPEC_EXAMPLE = "reasonseg:/data/ReasonSeg/val, refcoco:/data/refer_seg or custom:/data/mine.jsonl"
DEFAULT_REFER_SPLIT = "val"


@dataclass
class EvalItem:
    """One scored question: ``id`` names the target (a ReasonSeg sample, a custom record's mask), ``query`` the text
    asked about it (without question template), ``is_sentence`` selects the long-query template and split."""

    id: str
    query: str
    query_index: int
    is_sentence: bool
    image_path: Path
    source: str
    _target: object = field(default=None, repr=False)
    in_protocol: bool = True

    @property
    def uid(self) -> str:
        """Unique in the dataset: the target's id and the query's index."""
        return f"{self.id}#{self.query_index}"

    def key(self, mode: str) -> str:
        """The record key of this item scored in ``mode`` (``lisa`` or ``generate``)."""
        return f"{self.uid}|{mode}"

    def load_target(self, height: int, width: int) -> np.ndarray:
        """The ``HxW`` uint8 label map of this item: 0 background, 1 target, 255 ignore."""
        kind, payload = self._target
        if kind == "reasonseg":
            from ..data.reason_seg import load_label_map

            return load_label_map(payload, height, width)
        if kind == "custom":
            from ..data.custom import load_custom_mask

            paths, mask_value = payload
            target = np.zeros((height, width), dtype=np.uint8)
            for path in paths:
                target |= load_custom_mask(path, mask_value, (height, width))
            return target
        if kind == "refer":
            dataset, image, expression = payload
            if (height, width) != (image.height, image.width):
                raise InputError(f"{image.path}: the image is {width}x{height} but {dataset.refs_path.parent.name}/"
                                 f"instances.json says {image.width}x{image.height}; fix the image or the JSON")
            return dataset.mask(image, expression)
        raise InputError(f"{self.source}: unknown ground-truth kind {kind!r}")


@dataclass
class EvalDataset:
    kind: str
    path: Path
    split: str | None
    all_queries: bool
    items: list[EvalItem]
    problems: list[str]

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "split": self.split, "all_queries": self.all_queries}


def parse_data_spec(spec: str) -> tuple[str, str]:
    """``"KIND:PATH"`` -> ``(kind, path)``; raises a one-line :class:`InputError` when malformed or unknown."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"--data {spec!r} should be KIND:PATH, e.g. {DATA_SPEC_EXAMPLE}")
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if not kind or not path.strip():
        raise InputError(f"--data {spec!r} should be KIND:PATH with both parts given, e.g. {DATA_SPEC_EXAMPLE}")
    check_kind(kind)
    return kind, path


def check_kind(kind: str) -> None:
    if kind in PLANNED_KINDS:
        raise InputError(f"data kind {kind!r}: its reader is not built yet; evaluate with reasonseg:FOLDER or "
                         "custom:FILE.jsonl")
    if kind not in BUILT_KINDS:
        raise InputError(f"unknown data kind {kind!r}; use one of: {', '.join(KINDS)}")


def load_dataset(
    kind: str, path: str | Path, split: str | None = None, all_queries: bool = False
) -> EvalDataset:
    """The items of a dataset (see the module docstring); problems the readers skip are collected, not raised."""
    check_kind(kind)
    path = Path(path).expanduser()
    problems: list[str] = []
    if kind == "reasonseg":
        folder, items = _reasonseg_items(path, split, all_queries, problems)
    elif kind in REFER_KINDS:
        split = split or DEFAULT_REFER_SPLIT
        folder, items = _refer_items(kind, path, split, problems)
    else:
        if split is not None:
            raise InputError("--split does not apply to custom data (a JSONL file is one split); leave it out")
        folder, items = path, _custom_items(path, all_queries, problems)
    if not items:
        raise InputError(f"{folder}: no usable samples to evaluate")
    return EvalDataset(kind, folder, split, all_queries, items, problems)


def _unique_queries(queries: list[str], all_queries: bool, where: str, problems: list[str]) -> list[tuple[int, str]]:
    """``(index, stripped query)`` pairs to score: the first non-empty one, or all (duplicates left out)."""
    chosen, seen = [], set()
    for index, query in enumerate(queries):
        text = query.strip()
        if not text:
            continue
        if text in seen:
            problems.append(f"{where}: query {index} repeats an earlier one; scored once")
            continue
        seen.add(text)
        chosen.append((index, text))
        if not all_queries:
            break
    return chosen


def _reasonseg_items(path: Path, split: str | None, all_queries: bool, problems: list[str]):
    from ..data.reason_seg import list_samples

    folder = path / split if split else path
    if not folder.is_dir():
        if split and path.is_dir():
            raise InputError(f"{folder}: no split {split!r} in {path} (expected a sub-folder {split}/)")
        raise InputError(f"{folder}: ReasonSeg folder not found")
    samples = list_samples(folder, problems=problems)
    if not samples:
        subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.json")))
        if subfolders and not split:
            raise InputError(f"{folder} holds splits ({', '.join(subfolders)}), not samples; pass --split, e.g. "
                             f"--split {subfolders[-1] if 'val' not in subfolders else 'val'}")
    items = []
    for sample in samples:
        # LISA's ValDataset reads sents[0] only; text is stripped before it goes into the question
        chosen = _unique_queries(sample.queries, all_queries, str(sample.json_path), problems)
        for position, (index, query) in enumerate(chosen):
            items.append(EvalItem(sample.id, query, index, sample.is_sentence, sample.image_path,
                                  str(sample.json_path), ("reasonseg", sample), in_protocol=position == 0))
    return folder, items


def _custom_items(path: Path, all_queries: bool, problems: list[str]) -> list[EvalItem]:
    from ..data.custom import read_custom_jsonl

    records = read_custom_jsonl(path, strict=False, problems=problems)
    items = []
    for record in records:
        line = record.source.rsplit(":", 1)[-1]
        base_id = f"{record.image.stem}@{line}"
        masks, prompts = record.masks, record.prompts
        if len(masks) == 1 or len(prompts) == 1:
            groups = [(base_id, prompts, masks)]
        elif len(prompts) == len(masks):
            groups = [(f"{base_id}.{k}", [prompt], [mask]) for k, (prompt, mask) in enumerate(zip(prompts, masks))]
        else:
            problems.append(f"{record.source}: {len(masks)} masks but {len(prompts)} prompts; give one prompt per "
                            "mask, or one prompt for all of them; skipped")
            continue
        for item_id, group_prompts, group_masks in groups:
            chosen = _unique_queries(group_prompts, all_queries, record.source, problems)
            for position, (index, query) in enumerate(chosen):
                items.append(EvalItem(item_id, query, index, query.endswith(("?", ".")), record.image, record.source,
                                      ("custom", (list(group_masks), record.mask_value)), in_protocol=position == 0))
    return items


def _refer_items(kind: str, path: Path, split: str, problems: list[str]):
    """Every sentence of every ref of every image of the split (LISA's refer_seg validation)."""
    from ..data.refer import load_refer_dataset

    # PATH is the refer_seg root, or <root>/<kind> itself
    root = path.parent if path.name == kind and not (path / kind).is_dir() else path
    if not root.is_dir():
        raise InputError(f"{path}: refer_seg folder not found (expected the folder holding {kind}/ and images/)")
    dataset = load_refer_dataset(root, kind, split=split, problems=problems)
    items = []
    for image in dataset.images:
        per_target: dict[str, int] = {}
        for position, expression in enumerate(image.expressions):
            ref = expression.ref_id if expression.ref_id is not None else f"e{position}"
            item_id = f"{image.image_id}.{ref}"
            index = per_target.get(item_id, 0)
            per_target[item_id] = index + 1
            # LISA: sent["sent"].strip().lower(), asked with the short template
            items.append(EvalItem(item_id, expression.text.strip().lower(), index, False, image.path,
                                  f"{dataset.refs_path}: ref {ref} of image {image.image_id}",
                                  ("refer", (dataset, image, expression)), in_protocol=True))
    if not items:
        raise InputError(f"{dataset.refs_path}: no usable expressions in split {split!r}")
    return root / kind, items
