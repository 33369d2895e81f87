"""Seeded samples (scene + queries + language pairs) and the fixed train/val/test seed ranges."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from .queries import FAMILIES, QAPair, Query, caption, make_qa, make_queries
from .scene import Scene, SceneObject, sample_scene

# split -> first seed; every split owns SPLIT_SIZE consecutive seeds, so splits never share a seed
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLIT_SIZE = 10_000_000


def split_seed(split: str, index: int) -> int:
    """The seed of sample ``index`` of ``split``: train index, val 10_000_000 + index, test 20_000_000 + index."""
    if split not in SPLIT_OFFSETS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLIT_OFFSETS)}")
    if not 0 <= index < SPLIT_SIZE:
        raise InputError(f"sample index {index} outside 0..{SPLIT_SIZE - 1} for split {split!r}")
    return SPLIT_OFFSETS[split] + index


# where a pre-training run starts reading train scenes, per unit of its `seed`: a phase started from an earlier
# one's weights with another seed reads scenes the earlier one never saw (seed 0: scenes 0, 1, 2, ...; seed 3: from
# 3,000,000 on)
PHASE_SCENE_STRIDE = 1_000_000


def phase_train_index(seed: int, position: int) -> int:
    """The train-split index of the ``position``-th scene a pre-training run with ``seed`` reads."""
    return (seed * PHASE_SCENE_STRIDE + position) % SPLIT_SIZE


def split_seeds(split: str, num: int, start: int = 0) -> range:
    """Seeds of samples ``start`` .. ``start + num - 1`` of ``split``."""
    if num < 0 or start < 0:
        raise InputError(f"--num and --start must be >= 0 (got num={num}, start={start})")
    if start + num > SPLIT_SIZE:
        raise InputError(f"start + num = {start + num} exceeds the {SPLIT_SIZE} samples of split {split!r}")
    first = split_seed(split, start)
    return range(first, first + num)


def split_of_seed(seed: int) -> str:
    for split, offset in SPLIT_OFFSETS.items():
        if offset <= seed < offset + SPLIT_SIZE:
            return split
    raise InputError(f"seed {seed} belongs to no split (seeds run 0..{len(SPLIT_OFFSETS) * SPLIT_SIZE - 1})")


@dataclass(eq=False)
class Sample:
    seed: int
    scene: Scene
    queries: list[Query]
    qa: list[QAPair]
    caption: str

    @property
    def image(self) -> np.ndarray:
        return self.scene.image

    @property
    def objects(self) -> list[SceneObject]:
        return self.scene.objects

    @property
    def labels(self) -> np.ndarray:
        return self.scene.labels

    @property
    def width(self) -> int:
        return self.scene.width

    @property
    def height(self) -> int:
        return self.scene.height

    def to_dict(self) -> dict:
        """Everything but the pixels, as JSON-ready values."""
        bg = self.scene.background
        return {
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "background": bg.kind,
            "objects": [o.to_dict() for o in self.objects],
            "queries": [q.to_dict() for q in self.queries],
            "qa": [p.to_dict() for p in self.qa],
            "caption": self.caption,
        }


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_families(families):
    if families is None:
        return None
    families = [families] if isinstance(families, str) else list(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise InputError(f"unknown query families {', '.join(map(repr, unknown))}; known: {', '.join(FAMILIES)}")
    return families


def generate_scene(seed: int) -> Scene:
    """Only the scene of ``generate_sample(seed)`` (image, objects, masks, points, boxes): cheaper, same pixels."""
    return sample_scene(random.Random(_check_seed(seed)))


def sample_from_scene(scene: Scene, seed: int = 0, families=None) -> Sample:
    """Queries and language pairs for a given scene (e.g. one drawn with ``render_scene``)."""
    seed = _check_seed(seed)
    families = _check_families(families)
    return Sample(seed, scene, make_queries(scene, seed, families), make_qa(scene, seed), caption(scene))


def generate_sample(seed: int, families=None) -> Sample:
    """The sample of ``seed``: always the same image, objects and queries. ``families`` keeps only those families'
    queries (each family's query does not depend on which others are asked for)."""
    return sample_from_scene(generate_scene(seed), seed, families)
