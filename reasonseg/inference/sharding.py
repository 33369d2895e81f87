"""Work split over processes, resumable JSONL results, and the merge at the end.

Used by every job that runs the model over a list of items (``reasonseg predict --images/--jobs``,
``reasonseg eval``). The same command runs as one process or under ``accelerate launch`` (several GPUs, several
nodes); nothing here starts processes.

* Items are owned by index: process ``rank`` of ``world`` takes items ``rank, rank + world, ...`` of the full list,
  *before* finished ids are filtered out, so ownership never depends on what another process has written yet, and a
  rerun with a different number of processes still gives every item to exactly one process.
* Each process appends its records to its own part file ``<name>.part-<rank>-of-<world>.jsonl``, one flushed and
  fsynced line per item, so a killed run loses at most the line being written (cut lines are dropped on resume).
* A rerun reads the ids already present in ``<name>.jsonl`` and in any part file (of any world size) and skips them.
* :func:`merge_parts` (main process, after every process is done) folds the parts into ``<name>.jsonl`` in the
  order of the item list, one record per id, and removes the parts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence) -> list:
        """The items this process owns: every ``world``-th item starting at ``rank``."""
        return list(items[self.rank :: self.world])


def current_shard() -> Shard:
    """This process's place in an ``accelerate launch`` / ``torchrun`` job; ``Shard(0, 1)`` when run plainly.

    Under a multi-process launch on a machine without an accelerator, accelerate's state is set up on the CPU (gloo)
    first; otherwise every process would believe it runs alone.
    """
    import torch
    from accelerate import PartialState

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
        PartialState(cpu=not has_accelerator)
    state = PartialState()
    return Shard(state.process_index, state.num_processes)


def wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def part_path(out_dir: Path, name: str, shard: Shard) -> Path:
    return Path(out_dir) / f"{name}.part-{shard.rank:05d}-of-{shard.world:05d}.jsonl"


def result_paths(out_dir: Path, name: str) -> list[Path]:
    """The merged file (if any) followed by every part file, of any world size, in name order."""
    out_dir = Path(out_dir)
    merged = out_dir / f"{name}.jsonl"
    parts = sorted(out_dir.glob(f"{name}.part-*-of-*.jsonl"))
    return ([merged] if merged.is_file() else []) + parts


def read_records(path: Path) -> list[dict]:
    """The complete records of a JSONL file; a cut last line (a process killed mid-write) is ignored."""
    records = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was cut
                continue
            raise InputError(f"{path}:{number} is not valid JSON; delete or fix that line and rerun") from None
    return records


def finished_ids(out_dir: Path, name: str, key: str = "id") -> set[str]:
    done: set[str] = set()
    for path in result_paths(out_dir, name):
        done.update(str(record[key]) for record in read_records(path) if key in record)
    return done


class ResultWriter:
    """Appends one JSON line per finished item to this process's part file; usable as a context manager."""

    def __init__(self, out_dir: Path, name: str, shard: Shard):
        self.path = part_path(out_dir, name, shard)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_cut_last_line(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_parts(out_dir: Path, name: str, order: Iterable[str] | None = None, key: str = "id") -> Path:
    """Fold ``<name>.jsonl`` and every part into ``<name>.jsonl`` (written atomically), then remove the parts.

    Records are ordered by ``order`` (the ids of the item list); ids not in it follow in the order read. When an id
    appears twice, the first record read wins (the merged file is read first).
    """
    out_dir = Path(out_dir)
    paths = result_paths(out_dir, name)
    by_id: dict[str, dict] = {}
    for path in paths:
        for record in read_records(path):
            by_id.setdefault(str(record[key]), record)
    ordered = []
    for item_id in order or []:
        record = by_id.pop(str(item_id), None)
        if record is not None:
            ordered.append(record)
    ordered.extend(by_id.values())
    merged = out_dir / f"{name}.jsonl"
    temporary = merged.with_suffix(".jsonl.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for record in ordered:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, merged)
    for path in paths:
        if path != merged:
            path.unlink()
    return merged


def _drop_cut_last_line(path: Path) -> None:
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
