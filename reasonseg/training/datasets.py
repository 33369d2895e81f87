"""Training data: dataset readers behind one interface, mixed by sampling rates, deterministic per sample index.

Sample ``i`` of the mixture depends only on ``(seed, i)``: which dataset, which record, which phrasings. Resuming,
re-sharding over processes or changing the batch size never changes what sample ``i`` is.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..data.custom import load_custom_mask, read_custom_jsonl, record_conversations
from ..data.reason_seg import list_samples, load_label_map, read_annotation, render_label_map
from ..data.templates import EXPLANATORY_SUFFIX, answer_for, question_for
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

    def __init__(self, path: str, explanatory_rate: float = 0.0):
        self.samples = list_samples(path)
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


SOURCES = {"custom": CustomSource, "reason_seg": ReasonSegSource}


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
        return source.draw(rng.randrange(len(source)), rng, self.conversations)


def build_training_dataset(config: TrainingConfig, length: int) -> MixedTrainingDataset:
    sources, rates = [], []
    for spec in config.datasets:
        if spec.kind not in SOURCES:
            raise InputError(f"unknown dataset kind {spec.kind!r}; supported: {', '.join(SOURCES)}")
        sources.append(SOURCES[spec.kind](spec.path))
        rates.append(spec.rate)
    return MixedTrainingDataset(sources, rates, length, config.seed, config.conversations_per_image)
