"""Predicting over whole collections: job lists, the batched run loop, ``predictions.jsonl`` and COCO results.

A *job* is one image and one or more prompts. Jobs come from a folder or glob (:func:`jobs_from_images`, one set of
prompts for every image) or from a JSONL file (:func:`read_jobs`, one ``{"id", "image", "prompt" | "prompts",
"force_seg"?}`` object per line). :func:`run_jobs` answers every (image, prompt) pair and writes one JSON line per
pair to ``predictions.jsonl``:

* ``id``: the job's id when the job has one prompt, ``"<job id>#<k>"`` for prompt ``k`` of a job with several
  (unique per line, which is what resuming and merging key on); ``job_id``, ``prompt_index``, ``image``,
  ``prompt``;
* ``answer``, ``seg_forced``, ``height``, ``width`` and ``masks``: per mask ``{"rle", "area", "bbox", "score"}``
  (COCO compressed RLE, ``[x, y, w, h]`` box, SAM's predicted IoU);
* or, for an image that could not be read, ``error``: the one-line reason. The run goes on past bad images.

Work is split over ``accelerate launch`` processes by :mod:`reasonseg.inference.sharding` (strided by job, each
process appending to its own part file, merged by the main process at the end), and a rerun skips every id already
written, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError, ReasonSegError
from ..processing.image_io import load_image
from . import sharding
from .mask_io import mask_record, overlay_masks

RESULTS_NAME = "predictions"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_JOB_KEYS = {"id", "image", "prompt", "prompts", "force_seg", "image_id", "category_id"}


@dataclass(frozen=True)
class Job:
    """One image and the prompts asked about it.

    ``force_seg``: None follows the run's setting. ``image_id`` / ``category_id`` are only used by the COCO results
    file (defaults: the job id, and 1); ``category_id`` may be one value or one per prompt.
    """

    id: str
    image: str
    prompts: tuple[str, ...]
    force_seg: bool | None = None
    image_id: object = None
    category_id: object = None

    def record_id(self, index: int) -> str:
        return self.id if len(self.prompts) == 1 else f"{self.id}#{index}"

    def record_ids(self) -> list[str]:
        return [self.record_id(k) for k in range(len(self.prompts))]

    def category(self, index: int):
        if isinstance(self.category_id, (list, tuple)):
            return self.category_id[index]
        return 1 if self.category_id is None else self.category_id


@dataclass
class RunSummary:
    """What one process did: pairs predicted and failed now, pairs skipped as already written; on the main process
    also the merged file and every failure in it (``[(id, image, error)]``)."""

    predicted: int = 0
    failed_now: int = 0
    skipped: int = 0
    predictions_path: Path | None = None
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    coco_path: Path | None = None
    total_records: int = 0


# ---------------------------------------------------------------- job lists


def _check_prompts(prompts: Sequence[str], where: str) -> tuple[str, ...]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise InputError(f"{where} has no prompt; give --prompt TEXT (or a \"prompt\"/\"prompts\" in each job)")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where} has an empty prompt {prompt!r}; every prompt must be non-empty text")
    return tuple(prompts)


def jobs_from_images(spec: str, prompts: Sequence[str], force_seg: bool | None = None) -> list[Job]:
    """One job per image of a folder (its entries named like images, not recursive) or of a glob (``**`` recurses),
    in natural order (``frame2`` before ``frame10``).

    Ids are paths relative to the folder, or to the glob's leading directory. Entries named like images are kept
    even when they are not readable images (a directory ``x.png``, a corrupt file): the run records their errors.
    """
    prompts = _check_prompts(prompts, f"--images {spec}")
    path = Path(spec).expanduser()
    if path.is_dir():
        base = path
        matches = [
            entry.path
            for entry in os.scandir(path)
            if not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_SUFFIXES)
        ]
    elif glob.has_magic(spec):
        base = _glob_base(spec)
        matches = glob.glob(os.path.expanduser(spec), recursive=True)
    elif path.exists():
        raise InputError(f"--images {spec} is a file; pass a folder or a glob such as 'photos/*.jpg' "
                         "(or use --image for single files)")
    else:
        raise InputError(f"--images {spec} not found; pass an existing folder or a glob such as 'photos/*.jpg'")
    if not matches:
        raise InputError(f"no images in --images {spec} (looked for {', '.join(IMAGE_SUFFIXES)}); check the path")
    jobs = [
        Job(id=Path(os.path.relpath(m, base)).as_posix(), image=m, prompts=prompts, force_seg=force_seg)
        for m in sorted(matches, key=_natural_key)
    ]
    check_unique(jobs)
    return jobs


def _natural_key(path: str) -> list:
    """Sort ``frame2`` before ``frame10``: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path)]


def _glob_base(spec: str) -> Path:
    parts = Path(os.path.expanduser(spec)).parts
    plain = []
    for part in parts:
        if glob.has_magic(part):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")


def read_jobs(path, default_prompts: Sequence[str] = (), force_seg: bool | None = None) -> list[Job]:
    """Jobs from a JSONL file: ``{"id", "image", "prompt" | "prompts", "force_seg"?, "image_id"?,
    "category_id"?}`` per line (blank lines skipped). ``image`` may be relative to the jobs file's folder; ``id``
    defaults to ``image`` as written; a line without a prompt takes ``default_prompts``."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise InputError(f"--jobs {path} {what}; pass a JSONL file with one {{\"image\", \"prompt\"}} object per line")
    jobs = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                jobs.append(_job_from_line(line, f"{path}:{number}", path.parent, default_prompts, force_seg))
    if not jobs:
        raise InputError(f"--jobs {path} holds no jobs; write one JSON object per line")
    check_unique(jobs)
    return jobs


def _job_from_line(line: str, where: str, folder: Path, default_prompts, force_seg) -> Job:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err.msg}); write one JSON object per line") from None
    if not isinstance(entry, dict):
        raise InputError(f"{where} is not a JSON object; write {{\"id\": ..., \"image\": ..., \"prompt\": ...}}")
    unknown = sorted(set(entry) - _JOB_KEYS)
    if unknown:
        raise InputError(f"{where} has unknown keys {unknown}; allowed: {sorted(_JOB_KEYS)}")
    image = entry.get("image")
    if not isinstance(image, str) or not image:
        raise InputError(f"{where} needs \"image\": the path of an image file")
    if "prompt" in entry and "prompts" in entry:
        raise InputError(f"{where} has both \"prompt\" and \"prompts\"; keep one")
    prompts = entry.get("prompts", entry.get("prompt", default_prompts))
    if "prompts" in entry and not isinstance(entry["prompts"], list):
        raise InputError(f"{where}: \"prompts\" must be a list of strings")
    prompts = _check_prompts(prompts, where)
    job_id = entry.get("id", image)
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int)) or str(job_id) == "":
        raise InputError(f"{where}: \"id\" must be a non-empty string or an integer")
    forced = entry.get("force_seg", force_seg)
    if forced is not None and not isinstance(forced, bool):
        raise InputError(f"{where}: \"force_seg\" must be true or false")
    category = entry.get("category_id")
    if isinstance(category, list) and len(category) != len(prompts):
        raise InputError(f"{where}: \"category_id\" has {len(category)} entries for {len(prompts)} prompts")
    resolved = Path(image).expanduser()
    if not resolved.is_absolute():
        resolved = folder / resolved
    return Job(str(job_id), str(resolved), prompts, forced, entry.get("image_id"), category)


def check_unique(jobs: Sequence[Job]) -> None:
    seen: dict[str, str] = {}
    for job in jobs:
        for record_id in job.record_ids():
            if record_id in seen:
                raise InputError(f"id {record_id!r} is used twice (images {seen[record_id]} and {job.image}); "
                                 "give every job its own id")
            seen[record_id] = job.image


# ---------------------------------------------------------------- the run



def run_jobs(
    segmenter,
    jobs: Sequence[Job],
    out_dir,
    *,
    batch_size: int = 4,
    max_new_tokens: int = 512,
    force_seg: bool = False,
    save_masks: bool = False,
    save_overlays: bool = False,
    coco_json=None,
    shard: sharding.Shard | None = None,
    progress: bool = True,
) -> RunSummary:
    """Answer every job not yet in ``out_dir/predictions.jsonl``; this process's share, then the merge.

    ``batch_size`` images are read (one batch ahead, in a thread) and passed to
    :meth:`~reasonseg.inference.segmenter.Segmenter.predict_batch` together. ``save_masks`` writes
    ``masks/<name>_mask_<i>.png`` (0/255), ``save_overlays`` ``overlays/<name>.jpg`` (every mask in its colour).
    The main process merges the parts into ``predictions.jsonl`` and, with ``coco_json``, writes COCO results.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a whole number >= 1, not {batch_size!r}")
    check_unique(jobs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; pass a folder for predictions.jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    shard = shard or sharding.current_shard()
    done = sharding.finished_ids(out_dir, RESULTS_NAME)
    summary = RunSummary()
    pending: list[tuple[Job, list[int]]] = []
    for job in shard.take(jobs):
        todo = [k for k, record_id in enumerate(job.record_ids()) if record_id not in done]
        summary.skipped += len(job.prompts) - len(todo)
        if todo:
            pending.append((job, todo))
    options = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, force_seg=force_seg,
                   save_masks=save_masks, save_overlays=save_overlays, out_dir=out_dir)
    chunks = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    bar = _progress_bar(len(pending), shard, summary.skipped, enabled=progress)
    try:
        with sharding.ResultWriter(out_dir, RESULTS_NAME, shard) as writer, ThreadPoolExecutor(1) as reader:
            upcoming = reader.submit(_read_images, chunks[0]) if chunks else None
            for index, chunk in enumerate(chunks):
                images = upcoming.result()
                if index + 1 < len(chunks):
                    upcoming = reader.submit(_read_images, chunks[index + 1])
                for record in _predict_chunk(segmenter, chunk, images, options):
                    writer.write(record)
                    if "error" in record:
                        summary.failed_now += 1
                    else:
                        summary.predicted += 1
                bar.update(len(chunk))
                if summary.failed_now:
                    bar.set_postfix(failed=summary.failed_now, refresh=False)
    finally:
        bar.close()
    if shard.world > 1:
        sharding.wait_for_everyone()
    if shard.is_main:
        order = [record_id for job in jobs for record_id in job.record_ids()]
        summary.predictions_path = sharding.merge_parts(out_dir, RESULTS_NAME, order=order)
        records = sharding.read_records(summary.predictions_path)
        summary.total_records = len(records)
        summary.failures = [(r["id"], r.get("image", ""), r["error"]) for r in records if "error" in r]
        if coco_json is not None:
            summary.coco_path = write_coco_results(records, jobs, coco_json)
    return summary


def _progress_bar(total: int, shard: sharding.Shard, skipped: int, enabled: bool):
    from tqdm.auto import tqdm

    desc = "predict" if shard.world == 1 else f"predict [{shard.rank}/{shard.world}]"
    bar = tqdm(total=total, unit="img", desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
               position=shard.rank if shard.world > 1 else None, smoothing=0.1)
    if skipped and enabled:
        bar.write(f"{desc}: {skipped} predictions already in the output, skipped", file=sys.stderr)
    return bar


def _read_images(chunk) -> list:
    """Each job's RGB image, or the InputError saying why it cannot be read."""
    images = []
    for job, _ in chunk:
        try:
            images.append(load_image(job.image))
        except InputError as err:
            images.append(err)
    return images


def _predict_chunk(segmenter, chunk, images, options) -> list[dict]:
    """The records of one batch of jobs: predictions, or errors for jobs that could not be read or predicted."""
    records: dict[int, list[dict]] = {}
    good = []
    for position, ((job, todo), image) in enumerate(zip(chunk, images)):
        if isinstance(image, ReasonSegError):
            records[position] = [_error_record(job, k, image) for k in todo]
        else:
            good.append(position)
    if good:
        records.update(_predict_jobs(segmenter, [chunk[p] for p in good], [images[p] for p in good], good, options))
    return [record for position in sorted(records) for record in records[position]]


def _predict_jobs(segmenter, chunk, images, positions, options) -> dict[int, list[dict]]:
    try:
        predictions = segmenter.predict_batch(
            images,
            [[job.prompts[k] for k in todo] for job, todo in chunk],
            batch_size=options["batch_size"],
            max_new_tokens=options["max_new_tokens"],
            force_seg=[options["force_seg"] if job.force_seg is None else job.force_seg for job, _ in chunk],
        )
    except ReasonSegError as err:
        if len(chunk) == 1:
            job, todo = chunk[0]
            return {positions[0]: [_error_record(job, k, err) for k in todo]}
        found = {}  # find the job that failed: one at a time
        for single, image, position in zip(chunk, images, positions):
            found.update(_predict_jobs(segmenter, [single], [image], [position], options))
        return found
    out = {}
    for (job, todo), image, answers, position in zip(chunk, images, predictions, positions):
        out[position] = [_prediction_record(job, k, image, p, options) for k, p in zip(todo, answers)]
    return out


def _base_record(job: Job, index: int) -> dict:
    return {"id": job.record_id(index), "job_id": job.id, "prompt_index": index, "image": job.image,
            "prompt": job.prompts[index]}


def _error_record(job: Job, index: int, err: Exception) -> dict:
    return {**_base_record(job, index), "error": str(err)}


def _prediction_record(job: Job, index: int, image: Image.Image, prediction, options) -> dict:
    record = _base_record(job, index)
    record.update(
        answer=prediction.text,
        seg_forced=prediction.seg_forced,
        height=image.height,
        width=image.width,
        masks=[mask_record(mask, score) for mask, score in zip(prediction.masks, prediction.scores)],
    )
    out_dir, stem = options["out_dir"], file_stem(record["id"])
    if options["save_masks"]:
        record["mask_files"] = []
        for i, mask in enumerate(prediction.masks):
            relative = Path("masks") / f"{stem}_mask_{i}.png"
            _save_image(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), out_dir / relative)
            record["mask_files"].append(relative.as_posix())
    if options["save_overlays"]:
        relative = Path("overlays") / f"{stem}.jpg"
        _save_image(Image.fromarray(overlay_masks(image, prediction.masks), mode="RGB"), out_dir / relative)
        record["overlay_file"] = relative.as_posix()
    return record


def file_stem(record_id: str) -> str:
    """A file name stem for a record id: unsafe characters become ``_``; a hash keeps changed ids unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip(".") or "item"
    if safe != record_id:
        safe = f"{safe[:120]}-{hashlib.sha1(record_id.encode('utf-8')).hexdigest()[:8]}"
    return safe


def _save_image(image: Image.Image, path: Path) -> None:
    """Written beside its place and renamed in, so a killed run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".png":
        image.save(temporary, format="PNG")
    else:
        image.save(temporary, format="JPEG", quality=95)
    os.replace(temporary, path)


# ---------------------------------------------------------------- COCO results


def write_coco_results(records: Sequence[dict], jobs: Sequence[Job], path) -> Path:
    """A COCO results file (the list ``pycocotools``' ``COCO.loadRes`` reads): one entry per mask with
    ``image_id``, ``category_id``, ``segmentation`` (RLE), ``area``, ``bbox``, ``score`` (1.0 where the model
    gave none) and the ``prompt``. Failed records have no entries."""
    by_id = {record_id: (job, k) for job in jobs for k, record_id in enumerate(job.record_ids())}
    results = []
    for record in records:
        if "error" in record or record["id"] not in by_id:
            continue
        job, k = by_id[record["id"]]
        for mask in record["masks"]:
            score = mask.get("score")
            results.append({
                "image_id": job.id if job.image_id is None else job.image_id,
                "category_id": job.category(k),
                "segmentation": mask["rle"],
                "area": mask["area"],
                "bbox": mask["bbox"],
                "score": 1.0 if score is None else score,
                "prompt": record["prompt"],
            })
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(results, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    os.replace(temporary, path)
    return path
