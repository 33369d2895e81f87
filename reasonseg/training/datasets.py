"""Training data: dataset readers behind one interface, mixed by sampling rates, deterministic per sample index.

Sample ``i`` of the mixture depends only on ``(seed, i)``: which dataset, which record, which phrasings. Resuming,
re-sharding over processes or changing the batch size never changes what sample ``i`` is.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..data import lisa_tree
from ..data.custom import load_custom_mask, read_custom_jsonl, record_conversations
from ..data.reason_seg import list_samples, load_label_map, read_annotation, render_label_map
from ..data.refer import load_refer_dataset
from ..data.semantic import draw_classes, load_sem_seg_dataset, tidy_question
from ..data.templates import EXPLANATORY_SUFFIX, answer_for, question_for
from ..data.vqa import load_llava_instruct
from ..errors import InputError
from ..processing.image_io import load_image
from .collate import TrainingSample
from .config import TrainingConfig


class CustomSource:
    def __init__(self, path: str):
        self.records = read_custom_jsonl(path)

    def __len__(self) -> int:
        return len(self.records)

    def draw(self, index: int, rng: random.Random, max_conversations: int) -> TrainingSample:
        record = self.records[index]
        image = load_image(record.image)
        conversations, mask_paths = record_conversations(record, rng, max_conversations)
        cache = {}
        masks = []
        for path in mask_paths:
            if path not in cache:
                cache[path] = load_custom_mask(path, record.mask_value, (image.height, image.width))
            masks.append(cache[path])
        return TrainingSample(image, conversations, np.stack(masks), source=record.source)


class ReasonSegSource:
    """ReasonSeg-format folders; an ``answer`` field in the JSON (as the toy world writes) is used as is."""

    def __init__(
        self, path: str, explanatory_rate: float = 0.0, strict: bool = False, problems: list[str] | None = None
    ):
        self.samples = list_samples(path, strict=strict, problems=problems)
        if not self.samples:
            raise InputError(f"{path} holds no ReasonSeg samples (<id>.jpg|png + <id>.json)")
        self.explanatory_rate = explanatory_rate

    def __len__(self) -> int:
        return len(self.samples)

    def draw(self, index: int, rng: random.Random, max_conversations: int) -> TrainingSample:
        sample = self.samples[index]
        image = load_image(sample.image_path)
        label_map = load_label_map(sample, image.height, image.width)
        raw = json.loads(Path(sample.json_path).read_text())
        given_answer = raw.get("answer")
        target = (label_map == 1).astype(np.uint8)
        num_seg = given_answer.count("[SEG]") if given_answer else (1 if target.any() else 0)
        queries = rng.sample(sample.queries, min(max_conversations, len(sample.queries)))
        conversations = []
        for query in queries:
            question = question_for(query, sample.is_sentence, rng)
            if sample.explanation and rng.random() < self.explanatory_rate:
                question = question.rsplit(" Please", 1)[0] + EXPLANATORY_SUFFIX
                answer = f"{answer_for(1, rng)} {sample.explanation}"
            else:
                answer = given_answer or answer_for(num_seg, rng)
            conversations.append([(question, answer)])
        masks = per_seg_masks(sample.json_path, label_map, num_seg)
        all_masks = np.concatenate([masks] * len(conversations)) if len(masks) else np.zeros((0, *target.shape), np.uint8)
        return TrainingSample(image, conversations, all_masks, source=str(sample.json_path))


# subsets that ask for no mask (CE only), kept in stage 3 as LISA keeps LLaVA's VQA data: "qa", stage 2's question
# answering and region turns; "referring", stage 2's referring turns ("Which shape is the red star?" -> "It is the
# small red star at (3, 6).")
LANGUAGE_SUBSETS = ("qa", "referring")
# "referring": one-target answers in stage 2's referring words plus [SEG]; "referring_and_lists": also several-target
# answers in stage 2's list words, a [SEG] after each target (for a stage 2 trained with list turns)
ANSWER_STYLES = ("varied", "referring", "referring_and_lists")


MAX_SCENES_WITHOUT_KIND = 200  # a toy_world line with kinds or a target filter looks this far for a scene offering one
# toy_world target filters: which one-target queries a line keeps (its scenes are searched until one offers such a query)
TARGET_FILTERS = ("beside_same_colour",)


class ToyWorldSource:
    """The shapes world generated on the fly (docs/toy_world.md): ``path`` names the split (``train``), index ``i``
    is scene ``i`` of that split. Each conversation is one of the scene's queries, as the world phrases it or inside
    one of LISA's question templates (short-query or sentence templates by the query's kind); the answer is the
    world's (one [SEG] per target, none when the target is absent, a reason when asked why)."""

    def __init__(self, split: str, families: list[str] | str | None = None, answer_style: str = "varied",
                 kinds: list[str] | str | None = None, target_filter: str | None = None):
        from ..data.toy_world import SPLIT_SIZE, SPLIT_OFFSETS
        from ..data.toy_world.queries import check_query_kinds

        if answer_style not in ANSWER_STYLES:
            raise InputError(f"toy_world answer_style {answer_style!r} should be one of {', '.join(ANSWER_STYLES)}")
        self.answer_style = answer_style
        if split not in SPLIT_OFFSETS:
            raise InputError(f"toy_world path {split!r} should name a split: {', '.join(SPLIT_OFFSETS)}")
        self.split, self.size = split, SPLIT_SIZE
        self.families = families.split("||") if isinstance(families, str) else families
        language = [name for name in self.families or () if name in LANGUAGE_SUBSETS]
        self.language_subset = language[0] if language else None
        if language and len(self.families) > 1:
            raise InputError(f"toy_world subsets {language[0]!r} stands alone: give it its own dataset entry")
        self.kinds = kinds.split("||") if isinstance(kinds, str) else kinds
        if self.kinds is not None:
            if self.families is not None:
                raise InputError("toy_world: give subsets (query families) or kinds (query kinds), not both")
            check_query_kinds(self.kinds)
        if target_filter is not None and target_filter not in TARGET_FILTERS:
            raise InputError(f"toy_world target_filter {target_filter!r} should be one of {', '.join(TARGET_FILTERS)}")
        if target_filter is not None and self.language_subset:
            raise InputError(f"toy_world subsets {self.language_subset!r} asks for no masks: remove target_filter")
        self.target_filter = target_filter

    def __len__(self) -> int:
        return self.size

    def draw(self, index: int, rng: random.Random, max_conversations: int) -> TrainingSample:
        from ..data.toy_world import generate_sample, split_seed

        conversations, masks = [], []
        if self.language_subset:
            sample = generate_sample(split_seed(self.split, index))
            turns = self._language_turns(sample, rng)
            conversations = [[turn] for turn in rng.sample(turns, min(max_conversations, len(turns)))]
        else:
            sample, queries = self._sample_and_queries(index)
            for query in rng.sample(queries, min(max_conversations, len(queries))):
                text = rng.choice([query.text, *query.alternatives])
                if query.is_sentence:
                    question = rng.choice([question_for(text, True, rng), f"{text} Please output segmentation mask.",
                                           text])
                else:
                    question = rng.choice([question_for(text, False, rng), text])
                conversations.append([(question, self._answer(sample, query))])
                masks.extend(sample.objects[t].mask.astype(np.uint8) for t in query.targets)
        stacked = np.stack(masks) if masks else np.zeros((0, sample.height, sample.width), np.uint8)
        return TrainingSample(Image.fromarray(sample.image), conversations, stacked, source=f"toy_world:{sample.seed}")

    def _sample_and_queries(self, index: int):
        """Scene ``index`` and its queries; with ``kinds``, the first scene from ``index`` on that offers one of them
        (most scenes offer none of the rare kinds) and one query per kind it offers; with a target filter, the first
        scene from ``index`` on with a one-target query the filter keeps, and only those queries."""
        from ..data.toy_world import generate_sample, generate_scene, make_queries, sample_from_scene, split_seed
        from ..data.toy_world.queries import focus_queries

        if self.kinds is None and self.target_filter is None:
            sample = generate_sample(split_seed(self.split, index), families=self.families)
            return sample, sample.queries
        for offset in range(MAX_SCENES_WITHOUT_KIND):  # only scene and queries until one qualifies: no language pairs
            seed = split_seed(self.split, (index + offset) % self.size)
            scene = generate_scene(seed)
            if self.kinds is None:
                queries = make_queries(scene, seed, self.families)
            else:
                queries = focus_queries(scene, seed, self.kinds)
            queries = self._kept(scene, queries)
            if queries:
                return sample_from_scene(scene, seed, families=[]), queries
        wanted = f"kinds {', '.join(self.kinds)}" if self.kinds else "family"
        target = f" whose target is {self.target_filter}" if self.target_filter else ""
        raise InputError(f"toy_world: none of {MAX_SCENES_WITHOUT_KIND} scenes from {index} on offers a query of "
                         f"the asked {wanted}{target}; ask for commoner ones")

    def _kept(self, scene, queries: list) -> list:
        """``queries`` that pass the target filter (each target is looked at once)."""
        from ..data.toy_world.scene import beside_look_alikes

        if self.target_filter is None:
            return queries
        single = {query.targets[0] for query in queries if len(query.targets) == 1}
        beside = set(beside_look_alikes(scene, single))
        return [query for query in queries if len(query.targets) == 1 and query.targets[0] in beside]

    def _answer(self, sample, query) -> str:
        from ..data.toy_world.turns import list_seg_answer, referring_seg_answer

        if self.answer_style == "varied" or not query.targets:
            return query.answer
        if len(query.targets) == 1 and query.family != "multi_target":
            return referring_seg_answer(sample, query)
        return list_seg_answer(sample, query) if self.answer_style == "referring_and_lists" else query.answer

    def _language_turns(self, sample, rng: random.Random) -> list[tuple[str, str]]:
        from ..data.toy_world.turns import (
            REGION_QUESTIONS,
            objects_alone_in_their_cell,
            referring_queries,
            referring_turn,
            region_turn,
        )

        if self.language_subset == "referring":
            return [referring_turn(sample, query) for query in referring_queries(sample)] or [
                (pair.question, pair.answer) for pair in sample.qa]  # a scene with no one-target query
        turns = [(pair.question, pair.answer) for pair in sample.qa]
        return turns + [region_turn(cell, obj, rng.choice(REGION_QUESTIONS))
                        for cell, obj in objects_alone_in_their_cell(sample)]


def per_seg_masks(json_path, label_map: np.ndarray, num_seg: int) -> np.ndarray:
    """One 0/1 mask per [SEG]: the single target, or (several-target answers) each target shape on its own."""
    if num_seg == 0:
        return np.zeros((0, *label_map.shape), np.uint8)
    if num_seg == 1:
        return (label_map == 1).astype(np.uint8)[None]
    shapes = read_annotation(json_path).shapes
    targets = [s for s in shapes if "ignore" not in s.label and s.label != "flag"]
    if len(targets) != num_seg:
        raise InputError(f"answer has {num_seg} [SEG] but the annotation has {len(targets)} target shapes")
    return np.stack([(render_label_map([s], *label_map.shape) == 1).astype(np.uint8) for s in targets])


# ---------------------------------------------------------------------------------------------------- LISA's tree


MAX_REDRAWS = 20


class SubsetSource:
    """Several sub-datasets behind one source, LISA's way: a draw picks a sub-dataset uniformly, then a record.

    Index ``i`` addresses the records of all sub-datasets in order (``draw(i)`` is always the same record);
    :meth:`pick` is how the mixture chooses an index. A record that turns out unusable when drawn (an unreadable
    label map, a mask whose size is not its image's, nothing to ask about) raises with ``strict``; otherwise it is
    reported (``problems`` and a warning) and another record is picked with the same ``rng``.
    """

    kind = ""

    def __init__(self, subsets: list[tuple[str, object]], strict: bool, problems: list[str]):
        empty = [name for name, data in subsets if not len(data)]
        subsets = [(name, data) for name, data in subsets if len(data)]
        if empty and subsets:
            warnings.warn(f"{self.kind}: left out {', '.join(empty)}: no usable sample", stacklevel=3)
        if not subsets:
            first = f" (first problem: {problems[0]})" if problems else ""
            raise InputError(f"{self.kind}: no usable sample in any sub-dataset{first}")
        self.names = [name for name, _ in subsets]
        self.subsets = [data for _, data in subsets]
        self.offsets = np.cumsum([0] + [len(d) for d in self.subsets]).tolist()
        self.strict, self.problems = strict, problems
        if problems:
            warnings.warn(f"{self.kind}: skipped {len(problems)} bad record(s); first: {problems[0]}", stacklevel=3)

    def __len__(self) -> int:
        return self.offsets[-1]

    def pick(self, rng: random.Random) -> int:
        subset = rng.randrange(len(self.subsets))
        return self.offsets[subset] + rng.randrange(len(self.subsets[subset]))

    def locate(self, index: int) -> tuple[object, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.kind} index {index} out of range 0..{len(self) - 1}")
        subset = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.subsets[subset], index - self.offsets[subset]

    def draw(self, index: int, rng: random.Random, max_conversations: int) -> TrainingSample:
        for _ in range(MAX_REDRAWS):
            try:
                sample = self.draw_one(*self.locate(index), rng, max_conversations)
            except InputError as err:
                if self.strict:
                    raise
                self.problems.append(str(err))
                warnings.warn(str(err), stacklevel=2)
            else:
                if sample is not None:
                    return sample
            index = self.pick(rng)
        last = self.problems[-1] if self.problems else "none"
        raise InputError(f"{self.kind}: {MAX_REDRAWS} draws in a row gave no usable sample; last problem: {last}")

    def draw_one(self, data, local: int, rng: random.Random, max_conversations: int) -> TrainingSample | None:
        raise NotImplementedError


def _image_of_size(path, height: int, width: int):
    image = load_image(path)
    if (image.height, image.width) != (height, width):
        raise InputError(f"{path}: image is {image.width}x{image.height} but its masks are {width}x{height}")
    return image


def _seg_conversations(prompts: list[str], rng: random.Random) -> list[list[tuple[str, str]]]:
    """One short question per prompt (LISA: class names and expressions in lower case), one [SEG] answer each."""
    return [[(tidy_question(question_for(p.lower(), False, rng)), answer_for(1, rng))] for p in prompts]


class SemSegSource(SubsetSource):
    """``sem_seg``: ADE20K, COCO-Stuff, Mapillary, PASCAL-Part, PACO-LVIS; up to ``max_conversations`` classes."""

    kind = "sem_seg"

    def __init__(self, dataset_dir: str, subsets=None, strict: bool = False):
        problems: list[str] = []
        names = lisa_tree.parse_subsets(subsets, self.kind)
        super().__init__([(n, load_sem_seg_dataset(n, dataset_dir, strict, problems)) for n in names], strict, problems)

    def draw_one(self, data, local, rng, max_conversations):
        drawn = draw_classes(data, local, rng, max_conversations)
        if drawn is None:
            raise InputError(f"{data.name} sample {local}: no class to ask about (all pixels ignored)")
        image = _image_of_size(drawn.image_path, *drawn.masks.shape[1:])
        return TrainingSample(image, _seg_conversations(drawn.prompts, rng), drawn.masks, source=str(drawn.image_path))


class ReferSegSource(SubsetSource):
    """``refer_seg``: refCOCO, refCOCO+, refCOCOg, refCLEF, gRefCOCO; up to ``max_conversations`` expressions of
    one image (over all its refs), each with its object's mask."""

    kind = "refer_seg"

    def __init__(self, dataset_dir: str, subsets=None, strict: bool = False, split: str | None = None):
        problems: list[str] = []
        loaded = []
        for entry in lisa_tree.parse_subsets(subsets, self.kind):
            name, split_by = lisa_tree.refer_subset(entry)
            refer_root = Path(dataset_dir) / "refer_seg"
            loaded.append((entry, load_refer_dataset(refer_root, name, split or "train", split_by, strict, problems)))
        super().__init__(loaded, strict, problems)

    def draw_one(self, data, local, rng, max_conversations):
        record = data.images[local]
        chosen = rng.sample(record.expressions, min(max_conversations, len(record.expressions)))
        image = _image_of_size(record.path, record.height, record.width)
        masks = np.stack([data.mask(record, expression) for expression in chosen])
        conversations = _seg_conversations([e.text for e in chosen], rng)
        return TrainingSample(image, conversations, masks, source=f"{data.refs_path}: image {record.image_id}")


class VqaSource(SubsetSource):
    """``vqa``: LLaVA-Instruct conversations, one per image, no masks (CE loss only)."""

    kind = "vqa"

    def __init__(self, dataset_dir: str, subsets=None, strict: bool = False):
        problems: list[str] = []
        names = lisa_tree.parse_subsets(subsets, self.kind)
        super().__init__([(n, load_llava_instruct(dataset_dir, n, strict, problems)) for n in names], strict, problems)

    def draw_one(self, data, local, rng, max_conversations):
        record = data[local]
        image = load_image(record.image)
        return TrainingSample(image, [list(record.turns)], np.zeros((0, image.height, image.width), np.uint8),
                              source=record.source)


class ReasonSegTreeSource(SubsetSource):
    """``reason_seg`` in LISA's tree: ``ReasonSeg|train`` -> ``<dataset_dir>/reason_seg/ReasonSeg/train``."""

    kind = "reason_seg"

    def __init__(self, dataset_dir: str, subsets=None, strict: bool = False, explanatory_rate: float = 0.0):
        problems: list[str] = []
        loaded = []
        for entry in lisa_tree.parse_subsets(subsets, self.kind):
            folder = lisa_tree.reason_seg_folder(dataset_dir, entry)
            loaded.append((entry, ReasonSegSource(str(folder), explanatory_rate, strict, problems)))
        super().__init__(loaded, strict, problems)

    def draw_one(self, data, local, rng, max_conversations):
        return data.draw(local, rng, max_conversations)


def is_lisa_tree(path: str | Path) -> bool:
    """A folder laid out as LISA's ``dataset/`` (rather than a ReasonSeg folder of samples)."""
    path = Path(path)
    return any((path / sub).is_dir() for sub in ("reason_seg", "refer_seg", "ade20k", "llava_dataset", "vlpart"))


def make_source(spec):
    """A :class:`~reasonseg.training.config.DatasetSpec` -> its source."""
    subsets = getattr(spec, "subsets", None)
    strict = bool(getattr(spec, "strict", False))
    explanatory_rate = float(getattr(spec, "explanatory_rate", 0.0) or 0.0)
    answer_style = getattr(spec, "answer_style", "varied")
    kinds = getattr(spec, "kinds", None)
    target_filter = getattr(spec, "target_filter", None)
    if answer_style != "varied" and spec.kind != "toy_world":
        raise InputError(f"answer_style applies to toy_world datasets only; remove it from the {spec.kind} entry")
    for name, value in (("kinds", kinds), ("target_filter", target_filter)):
        if value is not None and spec.kind != "toy_world":
            raise InputError(f"{name} applies to toy_world datasets only; remove it from the {spec.kind} entry")
    if spec.kind == "custom":
        return CustomSource(spec.path)
    if spec.kind == "reason_seg":
        if subsets is None and not is_lisa_tree(spec.path):
            return ReasonSegSource(spec.path, explanatory_rate)
        return ReasonSegTreeSource(spec.path, subsets, strict, explanatory_rate)
    if spec.kind == "sem_seg":
        return SemSegSource(spec.path, subsets, strict)
    if spec.kind == "toy_world":
        return ToyWorldSource(spec.path, subsets, answer_style, kinds, target_filter)
    if spec.kind == "refer_seg":
        return ReferSegSource(spec.path, subsets, strict, spec.split)
    if spec.kind == "vqa":
        return VqaSource(spec.path, subsets, strict)
    raise InputError(f"unknown dataset kind {spec.kind!r}; supported: {', '.join(SOURCES)}")


SOURCES = {
    "custom": CustomSource,
    "reason_seg": ReasonSegSource,
    "sem_seg": SemSegSource,
    "refer_seg": ReferSegSource,
    "vqa": VqaSource,
    "toy_world": ToyWorldSource,
}


class MixedTrainingDataset(Dataset):
    def __init__(self, sources: list, rates: list[float], length: int, seed: int, conversations_per_image: int):
        total = float(sum(rates))
        if total <= 0:
            raise InputError("dataset sampling rates must add up to more than 0")
        self.sources, self.weights = sources, [r / total for r in rates]
        self.length, self.seed, self.conversations = length, seed, conversations_per_image

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> TrainingSample:
        rng = random.Random(f"{self.seed}:{index}")
        source = rng.choices(self.sources, weights=self.weights)[0]
        picked = source.pick(rng) if hasattr(source, "pick") else rng.randrange(len(source))
        return source.draw(picked, rng, self.conversations)


def build_training_dataset(config: TrainingConfig, length: int) -> MixedTrainingDataset:
    """Sources of ``config.datasets`` mixed by their rates. LISA's recipe is four entries on one dataset folder::

        datasets:
          - {kind: sem_seg, path: dataset, rate: 9, subsets: "ade20k||cocostuff||pascal_part||paco_lvis||mapillary"}
          - {kind: refer_seg, path: dataset, rate: 3, subsets: "refclef||refcoco||refcoco+||refcocog"}
          - {kind: vqa, path: dataset, rate: 3, subsets: llava_instruct_150k}
          - {kind: reason_seg, path: dataset, rate: 1, subsets: "ReasonSeg|train", explanatory_rate: 0.1}
    """
    sources, rates = [], []
    for spec in config.datasets:
        if spec.kind not in SOURCES:
            raise InputError(f"unknown dataset kind {spec.kind!r}; supported: {', '.join(SOURCES)}")
        sources.append(make_source(spec))
        rates.append(spec.rate)
    return MixedTrainingDataset(sources, rates, length, config.seed, config.conversations_per_image)
