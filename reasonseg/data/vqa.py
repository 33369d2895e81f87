"""Visual question answering in LLaVA-Instruct's JSON (conversations without masks; trained with the CE loss only).

On disk (LISA's tree)::

    <root>/llava_dataset/llava_instruct_150k.json      <root>/coco/train2017/<image>

The JSON is a list of ``{"id": ..., "image": "000000033471.jpg", "conversations": [{"from": "human", "value":
"<image>\\nWhat are the colors of the bus?"}, {"from": "gpt", "value": "The bus is ..."}, ...]}``. The ``<image>``
placeholder is removed from the text (the processor places the image itself, before the first question). A leading
``gpt`` message is dropped (as LLaVA/LISA do); after that messages must alternate ``human``/``gpt``; a trailing
question without an answer is dropped. Records with a missing image, no usable turn, an unknown role or a non-string
value are problems (``<file>: record <i>: <reason>``), skipped or fatal by ``strict`` as in the other readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .problems import report_problem as _report
from .refer import read_json_file

IMAGE_PLACEHOLDER = "<image>"
LLAVA_FOLDER = Path("llava_dataset")
VQA_IMAGES = Path("coco/train2017")
LISA_VQA = ("llava_instruct_150k",)


@dataclass
class VqaRecord:
    image: Path
    turns: list[tuple[str, str]]
    source: str


def parse_turns(conversations) -> list[tuple[str, str]]:
    """LLaVA ``conversations`` -> ``[(question, answer), ...]``. Raises ValueError with the reason."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list")
    messages = []
    for index, message in enumerate(conversations):
        if not isinstance(message, dict) or message.get("from") not in ("human", "gpt"):
            raise ValueError(f"message {index} needs 'from' equal to 'human' or 'gpt'")
        if not isinstance(message.get("value"), str):
            raise ValueError(f"message {index} needs a string 'value'")
        messages.append((message["from"], message["value"].replace(IMAGE_PLACEHOLDER, "").strip()))
    if messages[0][0] == "gpt":
        messages = messages[1:]
    turns = []
    for index in range(0, len(messages) - 1, 2):
        (role_q, question), (role_a, answer) = messages[index], messages[index + 1]
        if role_q != "human" or role_a != "gpt":
            raise ValueError(f"messages must alternate human/gpt (message {index + 1} breaks it)")
        if not question or not answer:
            raise ValueError(f"message {index + 1 if not question else index + 2} is empty")
        turns.append((question, answer))
    if not turns:
        raise ValueError("no question-answer pair")
    return turns


def read_vqa_json(
    json_path: str | Path,
    image_root: str | Path,
    strict: bool = False,
    problems: list[str] | None = None,
    check_images: bool = True,
) -> list[VqaRecord]:
    """The usable records of a LLaVA-Instruct-style JSON whose ``image`` names are relative to ``image_root``."""
    json_path, image_root = Path(json_path), Path(image_root)
    items = read_json_file(json_path, "VQA JSON")
    if not isinstance(items, list):
        raise InputError(f"{json_path}: must be a list of {{'image', 'conversations'}} records")
    records = []
    for index, item in enumerate(items):
        where = f"{json_path}: record {index}"
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"]:
            _report(f"{where}: needs a string 'image'", strict, problems)
            continue
        try:
            turns = parse_turns(item.get("conversations"))
        except ValueError as err:
            _report(f"{where}: {err}", strict, problems)
            continue
        image = image_root / item["image"]
        if check_images and not image.is_file():
            _report(f"{image}: image file not found ({where})", strict, problems)
            continue
        records.append(VqaRecord(image, turns, where))
    return records


def load_llava_instruct(
    dataset_dir: str | Path, name: str = "llava_instruct_150k", strict=False, problems=None, check_images=True
) -> list[VqaRecord]:
    """``<dataset_dir>/llava_dataset/<name>.json`` with images under ``<dataset_dir>/coco/train2017`` (LISA)."""
    root = Path(dataset_dir)
    return read_vqa_json(root / LLAVA_FOLDER / f"{name}.json", root / VQA_IMAGES, strict, problems, check_images)
