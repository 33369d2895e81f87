"""``reasonseg eval`` as a Python function: a model scored on a dataset, LISA's way and the honest way, side by side.

Two modes score every item (see :mod:`reasonseg.evaluation.datasets` for what an item is):

* ``lisa`` -- LISA's validation protocol, reproduced exactly. The question is LISA's fixed phrasing
  (:func:`lisa_question`), the assistant's answer is **written in** as ``[SEG].``, and one forward pass over that
  conversation gives the hidden state feeding the ``[SEG]``, hence the mask (``logits > 0``). The model never has
  to decide to segment.
* ``generate`` -- the model answers the same question freely (greedy decoding); the prediction is the union of the
  masks of the ``[SEG]`` tokens it emits (none: an empty prediction). The share of items where it emitted a
  ``[SEG]`` is reported with the scores.

Work is split over the processes of an ``accelerate launch`` / ``torchrun`` job by
:mod:`reasonseg.inference.sharding` (item ``i`` goes to process ``i % world``). With an output folder, every
scored item is one line of ``per_sample.jsonl`` (first in per-process part files, merged at the end), a rerun skips
the items already there, and ``metrics.json`` (and, asked for, ``report.html``) are written by the main process.
Batching (``batch_size`` items per forward pass, several images encoded together) and sharding leave every number
equal to a single-process, batch-1 run: each item's prediction depends on that item alone.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, ReasonSegError
from ..inference.sharding import (
    ResultWriter,
    Shard,
    current_shard,
    finished_ids,
    merge_parts,
    read_records,
    result_paths,
    wait_for_everyone,
)
from ..processing.processing_reasonseg import batch_pixel_values
from .datasets import EvalDataset, EvalItem, load_dataset, parse_data_spec
from .metrics import iou_from, mask_intersection_union

MODES = ("lisa", "generate")
MODE_CHOICES = ("lisa", "generate", "both")
LISA_ANSWER = "[SEG]."
# LISA's ValDataset phrasing (the user turn starts with the image placeholder, then "\n ")
SHORT_QUESTION = "What is {text} in this image? Please output segmentation mask."
SENTENCE_QUESTION = "{text} Please output segmentation mask."
RESULTS_NAME = "per_sample"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
REPORT_FILE = "report.html"
RECORD_KEY = "key"


def lisa_question_text(text: str, is_sentence: bool) -> str:
    """The words of the question LISA's validation asks about ``text`` (a phrase, or a whole sentence when
    ``is_sentence``), without the image placeholder."""
    return (SENTENCE_QUESTION if is_sentence else SHORT_QUESTION).format(text=text.strip())


def lisa_question(text: str, is_sentence: bool, image_token: str = "<image>", placement: str = "before_text") -> str:
    """The user turn LISA's validation asks about ``text``, with the image placeholder where the model's processor
    puts it."""
    question = lisa_question_text(text, is_sentence)
    return f"{question}\n{image_token}" if placement == "after_text" else f"{image_token}\n {question}"


def parse_modes(mode: str) -> tuple[str, ...]:
    """``"lisa"`` / ``"generate"`` / ``"both"`` -> the modes to run, in report order."""
    if mode not in MODE_CHOICES:
        raise InputError(f"--mode {mode!r} is not one of {', '.join(MODE_CHOICES)}")
    return MODES if mode == "both" else (mode,)


# ---------------------------------------------------------------------------------------------------- the LISA protocol


@dataclass
class ForcedOutput:
    """One conversation of a forced batch: ``mask_logits`` ``[n, H, W]`` float32 (one per [SEG] of its answer, at
    its image's size) and SAM's predicted IoU per mask."""

    mask_logits: np.ndarray
    scores: np.ndarray


@torch.no_grad()
def forced_predictions(model, processor, images: list, rows: list[tuple[int, str, str]]) -> list[ForcedOutput]:
    """LISA's forced-[SEG] masks for a batch of conversations, with the model's public methods.

    Args:
        model: a :class:`~reasonseg.modeling.modeling_reasonseg.ReasonSegForCausalLM` or a Sa2VA model
            (``config.seg_token_id`` set).
        processor: its :class:`~reasonseg.processing.processing_reasonseg.ReasonSegProcessor` (or Sa2VA processor).
        images: RGB PIL images; each is encoded once (vision tower and SAM) however many rows ask about it.
        rows: ``(image index, user turn, assistant answer)``; the answer holds the [SEG]s (LISA: ``"[SEG]."``).

    The conversations are right-padded and run in one forward pass; the state feeding each [SEG] (the one before it
    for LISA checkpoints) is projected into a SAM prompt. Returns one :class:`ForcedOutput` per row, in order.
    """
    if not rows:
        return []
    seg_id = model.config.seg_token_id
    if seg_id is None:
        raise InputError("the model has no [SEG] token id; load it through Segmenter.from_pretrained")
    inputs = [processor.preprocess_image(image) for image in images]
    features = model.encode_images(batch_pixel_values([i.pixel_values for i in inputs]))
    sam_embeddings = model.encode_sam_images(torch.cat([i.sam_pixel_values for i in inputs]))
    id_lists = [processor.encode(processor.conversation_prompt([(question, answer)])) for _, question, answer in rows]
    longest = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(rows), longest), processor.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, ids in enumerate(id_lists):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    output = model(
        input_ids=input_ids,
        attention_mask=attention,
        image_indices=[image for image, _, _ in rows],
        image_features=features,
        sam_image_embeddings=sam_embeddings,
        resized_sizes=[i.resized_size for i in inputs],
        original_sizes=[i.original_size for i in inputs],
        return_logits=False,
    )
    # the model returns each image's masks in reading order: its rows in order, each row's [SEG]s in order
    taken = [0] * len(images)
    results = []
    for (image, _, _), ids in zip(rows, id_lists):
        count = ids.count(seg_id)
        start = taken[image]
        taken[image] += count
        logits = output.pred_masks[image][start : start + count].float().cpu().numpy()
        scores = output.iou_predictions[image][start : start + count].float().cpu().numpy().reshape(-1)
        results.append(ForcedOutput(logits, scores))
    return results


def forced_mask(processor, output: ForcedOutput, shape: tuple[int, int]) -> np.ndarray:
    """What LISA's protocol scores for one forced conversation: the union of its masks (logits > 0, then the
    processor's ``mask_regions`` rule), or an empty ``shape`` mask when its answer held no [SEG]."""
    masks = [processor.post_process_mask(logits > 0) for logits in output.mask_logits]
    return np.logical_or.reduce(masks) if masks else np.zeros(shape, dtype=bool)


# ---------------------------------------------------------------------------------------------------- processes



# ---------------------------------------------------------------------------------------------------- the run


@dataclass
class EvalResult:
    """``metrics``: what ``metrics.json`` holds; ``records``: one dict per (item, mode), in item order;
    ``table``: the printed summary; ``out_dir``: where files were written (None when nothing was)."""

    metrics: dict
    records: list[dict]
    table: str
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class _Loaded:
    item: EvalItem
    image: object
    target: np.ndarray


def _load_items(items: list[EvalItem], problems: list[str]) -> list[_Loaded]:
    from ..processing.image_io import load_image

    loaded, images = [], {}
    for item in items:
        try:
            image = images.get(item.image_path)
            if image is None:
                image = images[item.image_path] = load_image(item.image_path)
            target = item.load_target(image.height, image.width)
        except ReasonSegError as err:
            message = f"{item.source}: {err}; item {item.uid} not scored"
            problems.append(message)
            print(message, file=sys.stderr)
            continue
        loaded.append(_Loaded(item, image, target))
    return loaded


def _image_groups(batch: list[_Loaded]) -> tuple[list, list[int]]:
    """The distinct images of a batch (first-seen order) and each entry's index among them."""
    images, index_of, indices = [], {}, []
    for entry in batch:
        key = str(entry.item.image_path)
        if key not in index_of:
            index_of[key] = len(images)
            images.append(entry.image)
        indices.append(index_of[key])
    return images, indices


def _record(entry: _Loaded, mode: str, prediction: np.ndarray, answer: str, seg_count: int, forced: bool) -> dict:
    from ..inference.mask_io import mask_to_rle

    intersection, union = mask_intersection_union(prediction, entry.target)
    item = entry.item
    return {
        RECORD_KEY: item.key(mode),
        "id": item.id,
        "query": item.query,
        "query_index": item.query_index,
        "is_sentence": item.is_sentence,
        "in_protocol": item.in_protocol,
        "mode": mode,
        "answer": answer,
        "seg_count": seg_count,
        "forced": forced,
        "iou": iou_from(intersection, union),
        "intersection": intersection,
        "union": union,
        "has_target": bool(np.any(entry.target == 1)),
        "pred_empty": not bool(prediction.any()),
        "image": str(item.image_path),
        "pred_rle": mask_to_rle(prediction),
    }


def _lisa_records(segmenter, batch: list[_Loaded], answer: str) -> list[dict]:
    processor = segmenter.processor
    images, indices = _image_groups(batch)
    token, placement = processor.settings.image_token, processor.settings.image_placement
    rows = [(index, lisa_question(e.item.query, e.item.is_sentence, token, placement), answer)
            for e, index in zip(batch, indices)]
    outputs = forced_predictions(segmenter.model, processor, images, rows)
    records = []
    for entry, output in zip(batch, outputs):
        prediction = forced_mask(processor, output, entry.target.shape)
        records.append(_record(entry, "lisa", prediction, answer, len(output.mask_logits), forced=True))
    return records


def _generate_records(segmenter, batch: list[_Loaded], batch_size: int, max_new_tokens: int) -> list[dict]:
    processor = segmenter.processor
    images, indices = _image_groups(batch)
    token, placement = processor.settings.image_token, processor.settings.image_placement
    prompts: list[list[str]] = [[] for _ in images]
    slot = []
    for entry, index in zip(batch, indices):
        slot.append((index, len(prompts[index])))
        prompts[index].append(lisa_question(entry.item.query, entry.item.is_sentence, token, placement))
    answers = segmenter.predict_batch(images, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
    seg_id = segmenter.model.config.seg_token_id
    records = []
    for entry, (index, position) in zip(batch, slot):
        prediction_obj = answers[index][position]
        masks = prediction_obj.masks
        prediction = np.logical_or.reduce(masks) if masks else np.zeros(entry.target.shape, dtype=bool)
        emitted = sum(1 for token_id in prediction_obj.token_ids if token_id == seg_id)
        records.append(_record(entry, "generate", prediction, prediction_obj.text, emitted, forced=False))
    return records


def _run_settings(segmenter, dataset: EvalDataset, max_new_tokens: int, model_name: str | None,
                  lisa_answer: str) -> dict:
    name = model_name or getattr(segmenter.model.config, "_name_or_path", "") or "unnamed model"
    return {"model": str(name), "data": dataset.describe(), "max_new_tokens": max_new_tokens,
            "lisa_answer": lisa_answer, "mask_regions": segmenter.processor.settings.mask_regions}


def _check_resume(out_dir: Path, settings: dict, modes: tuple[str, ...]) -> bool:
    """A folder holding another run's results must not be mixed into this one. Returns whether ``run.json`` is to
    be (re)written with this run's settings."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        return True
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path} is unreadable; delete it (or use another --out) to start afresh") from None
    defaults = {"lisa_answer": LISA_ANSWER, "mask_regions": "all"}  # run.json written before these were recorded
    for key in ("model", "data", "lisa_answer", "mask_regions"):
        if previous.get(key, defaults.get(key)) != settings[key]:
            raise InputError(f"{out_dir} holds results of another run ({key}: {previous.get(key)!r}, now "
                             f"{settings[key]!r}); use another --out or delete that folder")
    if "generate" not in modes or previous.get("max_new_tokens") == settings["max_new_tokens"]:
        return False
    if any(r.get("mode") == "generate" for p in result_paths(out_dir, RESULTS_NAME) for r in read_records(p)):
        raise InputError(f"{out_dir} holds answers generated with max_new_tokens {previous.get('max_new_tokens')}, "
                         f"not {settings['max_new_tokens']}; use another --out or the same --max-new-tokens")
    return True  # no answers generated yet: this run's answer length becomes the folder's


def _write_json_atomically(path: Path, data) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)


def evaluate(
    segmenter,
    data: str | EvalDataset,
    *,
    split: str | None = None,
    all_queries: bool = False,
    mode: str = "both",
    batch_size: int = 1,
    max_new_tokens: int = 512,
    out_dir: str | Path | None = None,
    report: bool = False,
    progress: bool = False,
    limit: int | None = None,
    model_name: str | None = None,
    shard: Shard | None = None,
    lisa_answer: str = LISA_ANSWER,
) -> EvalResult:
    """Scores ``segmenter`` on ``data`` (``"KIND:PATH"`` or a loaded :class:`EvalDataset`).

    Args:
        mode: ``lisa``, ``generate`` or ``both``.
        batch_size: items per forward pass (numbers do not depend on it).
        max_new_tokens: the longest answer in ``generate`` mode.
        out_dir: where ``per_sample.jsonl``, ``metrics.json`` (and ``report.html``) go; a rerun into the same folder
            skips the items already scored there. Required when several processes run.
        report: also write ``report.html`` (metrics and the 24 worst items as overlays); needs ``out_dir``.
        limit: score only the first ``limit`` items (a quick look).
        shard: this process's place (default: from the launch environment).
        lisa_answer: the assistant turn written in by ``lisa`` mode (LISA's ``"[SEG]."``; another phrasing, e.g.
            ``"Sure, [SEG]."``, only to compare with references recorded that way).

    Returns an :class:`EvalResult`; every process gets the same metrics.
    """
    from .report import format_table, summarize, write_html_report

    modes = parse_modes(mode)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a whole number >= 1, not {batch_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be a whole number >= 1, not {max_new_tokens!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"--limit must be a whole number >= 1, not {limit!r}")
    if report and out_dir is None:
        raise InputError("--report writes report.html into the output folder; give --out DIR")
    if isinstance(data, EvalDataset):
        dataset = data
    else:
        kind, path = parse_data_spec(data)
        dataset = load_dataset(kind, path, split=split, all_queries=all_queries)
    items = dataset.items[:limit] if limit else list(dataset.items)
    shard = shard or current_shard()
    if shard.world > 1 and out_dir is None:
        raise InputError("several processes share their results through files; give --out DIR")

    problems = list(dataset.problems)
    if not isinstance(lisa_answer, str) or "[SEG]" not in lisa_answer:
        raise InputError(f"the forced answer {lisa_answer!r} must contain [SEG]")
    settings = _run_settings(segmenter, dataset, max_new_tokens, model_name, lisa_answer)
    out = Path(out_dir) if out_dir is not None else None
    memory: list[dict] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # written first, so that the results of a killed run are recognised too
        if _check_resume(out, settings, modes) and shard.is_main:
            _write_json_atomically(out / RUN_FILE, settings)
        done = finished_ids(out, RESULTS_NAME, key=RECORD_KEY)
    else:
        done = set()
    mine = shard.take(items)
    todo = [item for item in mine if any(item.key(m) not in done for m in modes)]

    writer = ResultWriter(out, RESULTS_NAME, shard) if out is not None and todo else None
    bar = _progress(len(todo), enabled=progress and shard.is_main, skipped=len(mine) - len(todo))
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = _load_items(chunk, problems)
            records = []
            if batch and "lisa" in modes:
                needed = [e for e in batch if e.item.key("lisa") not in done]
                records += _lisa_records(segmenter, needed, lisa_answer) if needed else []
            if batch and "generate" in modes:
                needed = [e for e in batch if e.item.key("generate") not in done]
                records += _generate_records(segmenter, needed, batch_size, max_new_tokens) if needed else []
            for record in records:
                if writer is not None:
                    writer.write(record)
                else:
                    memory.append(record)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()

    order = [item.key(m) for item in items for m in modes]
    files: list[Path] = []
    if out is not None:
        wait_for_everyone()
        if shard.is_main:
            merge_parts(out, RESULTS_NAME, order=order, key=RECORD_KEY)
        wait_for_everyone()
        all_records = read_records(out / f"{RESULTS_NAME}.jsonl") if (out / f"{RESULTS_NAME}.jsonl").is_file() else []
    else:
        all_records = memory
    by_key = {record[RECORD_KEY]: record for record in all_records}
    records = [by_key[key] for key in order if key in by_key]

    metrics = summarize(records, modes, dataset, settings, world=shard.world, batch_size=batch_size)
    metrics["not_scored"] = len(order) - len(records)
    metrics["problems"] = problems
    table = format_table(metrics)
    if out is not None and shard.is_main:
        _write_json_atomically(out / METRICS_FILE, metrics)
        files += [out / f"{RESULTS_NAME}.jsonl", out / METRICS_FILE]
        if report:
            items_by_uid = {item.uid: item for item in items}
            files.append(write_html_report(out / REPORT_FILE, metrics, records, items_by_uid))
    if out is not None:
        wait_for_everyone()
    return EvalResult(metrics, records, table, out, files, problems)


def _progress(total: int, enabled: bool, skipped: int):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    description = "eval" + (f" ({skipped} already done)" if skipped else "")
    return tqdm(total=total, desc=description, unit="item", file=sys.stderr, dynamic_ncols=True)
