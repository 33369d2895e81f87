"""The simple format for one's own data (e.g. blood vessels in microscopy images).

A JSONL file, one record per line, paths relative to the file:
    {"image": "img/001.png", "mask": "masks/001.png", "prompt": "blood vessel"}
    {"image": "img/002.png", "masks": ["m/002_a.png", "m/002_b.png"], "prompts": ["the left kidney", "..."],
     "answer": "Sure, [SEG] and [SEG]."}
Masks are PNGs: 0/255 or 0/1 binary, or (with ``"mask_value": k``) an index map where pixels equal to k are the
target. ``mask`` + one or more prompts: each prompt is a separate question about that one mask. ``masks``: one [SEG]
per mask in one answer. ``answer`` (optional) must hold as many [SEG] as masks; otherwise an answer is phrased.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .templates import answer_for, question_for


@dataclass
class CustomRecord:
    image: Path
    masks: list[Path]
    prompts: list[str]
    answer: str | None
    mask_value: int | None
    source: str


def read_custom_jsonl(path: str | Path, strict: bool = True, problems: list[str] | None = None) -> list[CustomRecord]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"custom dataset {path} not found (expected a JSONL file)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            records.append(_parse_record(json.loads(line), path.parent, where))
        except (json.JSONDecodeError, InputError, TypeError, KeyError) as err:
            message = f"{where}: {err.msg if isinstance(err, json.JSONDecodeError) else err}"
            if strict:
                raise InputError(message) from None
            if problems is not None:
                problems.append(message)
    if not records:
        raise InputError(f"{path} holds no usable records")
    return records


def _parse_record(raw: dict, root: Path, where: str) -> CustomRecord:
    if not isinstance(raw, dict) or "image" not in raw:
        raise InputError("a record needs an 'image'")
    masks = [raw["mask"]] if "mask" in raw else raw.get("masks")
    if not masks:
        raise InputError("a record needs 'mask' or 'masks'")
    prompts = raw.get("prompts") or ([raw["prompt"]] if "prompt" in raw else None)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InputError("a record needs 'prompt' or a non-empty 'prompts' list")
    image = root / raw["image"]
    mask_paths = [root / m for m in masks]
    for file in [image, *mask_paths]:
        if not file.is_file():
            raise InputError(f"missing file {file}")
    answer = raw.get("answer")
    if answer is not None and answer.count("[SEG]") != len(mask_paths):
        raise InputError(f"answer has {answer.count('[SEG]')} [SEG] but the record has {len(mask_paths)} masks")
    return CustomRecord(image, mask_paths, prompts, answer, raw.get("mask_value"), where)


def load_custom_mask(path: Path, mask_value: int | None, size: tuple[int, int]) -> np.ndarray:
    """A 0/1 uint8 ``[H, W]`` mask; ``size`` is the image's ``(H, W)`` it must match."""
    array = np.asarray(Image.open(path))
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != tuple(size):
        raise InputError(f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is {size[1]}x{size[0]}")
    if mask_value is not None:
        return (array == mask_value).astype(np.uint8)
    return (array > 0).astype(np.uint8)


def record_conversations(record: CustomRecord, rng: random.Random, max_conversations: int):
    """Conversations and the masks they point at (paths, in [SEG] order) for one training draw of a record."""
    if len(record.masks) == 1:
        chosen = rng.sample(record.prompts, min(max_conversations, len(record.prompts)))
        conversations = [[(question_for(p, p.rstrip().endswith(("?", ".")), rng), record.answer or answer_for(1, rng))]
                         for p in chosen]
        return conversations, record.masks * len(chosen)
    question = question_for(" and ".join(record.prompts), False, rng)
    return [[(question, record.answer or answer_for(len(record.masks), rng))]], list(record.masks)
