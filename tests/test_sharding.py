"""Work split, resume and merge of reasonseg.inference.sharding."""

from __future__ import annotations

import json

import pytest

from reasonseg.errors import InputError
from reasonseg.inference.sharding import ResultWriter, Shard, finished_ids, merge_parts, read_records


def test_every_item_is_owned_by_exactly_one_process_for_any_world_size():
    items = [f"id{i}" for i in range(11)]
    for world in (1, 2, 3, 4):
        owned = [item for rank in range(world) for item in Shard(rank, world).take(items)]
        assert sorted(owned) == sorted(items) and len(owned) == len(items)
    assert Shard(1, 3).take(items) == ["id1", "id4", "id7", "id10"]


def test_killed_run_resumes_without_redoing_or_duplicating(tmp_path):
    items = [f"id{i}" for i in range(6)]
    with ResultWriter(tmp_path, "preds", Shard(0, 2)) as writer:
        writer.write({"id": "id0", "answer": "a"})
    with ResultWriter(tmp_path, "preds", Shard(1, 2)) as writer:
        writer.write({"id": "id1", "answer": "b"})
    part = tmp_path / "preds.part-00001-of-00002.jsonl"
    part.write_text(part.read_text() + '{"id": "id3", "ans')  # killed mid-line
    assert finished_ids(tmp_path, "preds") == {"id0", "id1"}

    # resumed with a single process: it owns everything but skips what is done
    done = finished_ids(tmp_path, "preds")
    with ResultWriter(tmp_path, "preds", Shard(0, 1)) as writer:
        for item in Shard(0, 1).take(items):
            if item not in done:
                writer.write({"id": item, "answer": item.upper()})
    merged = merge_parts(tmp_path, "preds", order=items)
    records = read_records(merged)
    assert [r["id"] for r in records] == items
    assert records[0]["answer"] == "a" and records[3]["answer"] == "ID3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl"]


def test_writer_drops_its_own_cut_line_before_appending(tmp_path):
    part = tmp_path / "x.part-00000-of-00001.jsonl"
    part.write_text('{"id": "a"}\n{"id": "b", "cut')
    with ResultWriter(tmp_path, "x", Shard()) as writer:
        writer.write({"id": "b"})
    assert [json.loads(line)["id"] for line in part.read_text().splitlines()] == ["a", "b"]


def test_a_damaged_line_in_the_middle_is_reported_by_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:2 is not valid JSON"):
        read_records(path)
