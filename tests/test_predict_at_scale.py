"""`reasonseg predict --images/--jobs`: batched, sharded, resumable runs over collections, and their outputs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasonseg.cli.main import main
from reasonseg.errors import InputError
from reasonseg.inference import batch_jobs
from reasonseg.inference.batch_jobs import jobs_from_images, read_jobs
from reasonseg.inference.mask_io import mask_bbox, mask_to_rle, rle_to_mask
from reasonseg.inference.segmenter import Segmenter

REPO_ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIG = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"


def _model_dir(tmp_path: Path, tiny) -> str:
    model, processor = tiny
    weight = model.language_model.lm_head.weight.data
    weight[processor.seg_token_id] += 0.5 * weight[processor.seg_token_id].sign()  # answers with [SEG]s: masks
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def _write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    names = []
    for index in range(count):
        height, width = 30 + 7 * index, 64 - 3 * index
        Image.fromarray((rng.rand(height, width, 3) * 255).astype(np.uint8)).save(folder / f"img{index}.png")
        names.append(f"img{index}.png")
    return names


def _jobs_file(tmp_path: Path, count: int = 5) -> Path:
    """``count`` images; image 0 gets three prompts, image 2 two, the others one; image 1 forces [SEG]."""
    names = _write_images(tmp_path / "images", count)
    lines = []
    for index, name in enumerate(names):
        job = {"id": f"job{index}", "image": f"images/{name}"}
        if index == 0:
            job["prompts"] = ["the circle", "which shape could roll away?", "the red one"]
        elif index == 2:
            job["prompts"] = ["all of them", "the square"]
        else:
            job["prompt"] = "the leftmost shape"
        if index == 1:
            job["force_seg"] = True
        lines.append(json.dumps(job))
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _assert_same_records(ones: list[dict], others: list[dict]) -> None:
    """Equal records: ids, prompts, answers, boxes and areas alike; masks equal but for at most 2 pixels (a logit
    within float rounding of 0 may land either side of the threshold); scores equal to float rounding."""
    assert [r["id"] for r in ones] == [r["id"] for r in others]
    for one, other in zip(ones, others):
        plain = {k: v for k, v in one.items() if k != "masks"}
        assert plain == {k: v for k, v in other.items() if k != "masks"}
        assert len(one.get("masks", [])) == len(other.get("masks", []))
        for a, b in zip(one.get("masks", []), other.get("masks", [])):
            assert np.count_nonzero(rle_to_mask(a["rle"]) != rle_to_mask(b["rle"])) <= 2
            assert abs(a["area"] - b["area"]) <= 2
            assert abs(a["score"] - b["score"]) < 1e-5


def _predict(*args: str) -> int:
    return main(["predict", "--device", "cpu", "--max-new-tokens", "4", "--no-progress", *args])


def test_jobs_batch_1_and_batch_8_give_the_same_predictions(tmp_path, tiny, capsys):
    model_dir = _model_dir(tmp_path, tiny)
    jobs = _jobs_file(tmp_path)
    for batch in ("1", "8"):
        assert _predict("--model", model_dir, "--jobs", str(jobs), "--out", str(tmp_path / batch),
                        "--batch-size", batch) == 0
    one, eight = _records(tmp_path / "1"), _records(tmp_path / "8")
    assert [r["id"] for r in one] == ["job0#0", "job0#1", "job0#2", "job1", "job2#0", "job2#1", "job3", "job4"]
    assert one[1]["prompt"] == "which shape could roll away?" and one[1]["job_id"] == "job0"
    assert sum(len(r["masks"]) for r in one) > 0 and all("error" not in r for r in one)
    _assert_same_records(one, eight)
    assert "8 predictions, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "8").iterdir()) == ["predictions.jsonl"]  # parts merged away


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_same_predictions_as_one(tmp_path, tiny):
    model_dir = _model_dir(tmp_path, tiny)
    jobs = _jobs_file(tmp_path)
    assert _predict("--model", model_dir, "--jobs", str(jobs), "--out", str(tmp_path / "one"), "--batch-size", "1") == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG),
               "--main_process_port", str(_free_port()), "-m", "reasonseg", "predict", "--model", model_dir,
               "--jobs", str(jobs), "--out", str(tmp_path / "two"), "--batch-size", "2", "--max-new-tokens", "4",
               "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("8 predictions, 0 failed (process 0 of 2") == 1  # only the main process reports
    _assert_same_records(_records(tmp_path / "one"), _records(tmp_path / "two"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["predictions.jsonl"]


class _Counting:
    """Wraps Segmenter.predict_batch: counts the images it is given; raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, monkeypatch, stop_at: int | None = None):
        self.images, self.calls, self.stop_at = 0, 0, stop_at
        original = Segmenter.predict_batch

        def wrapped(segmenter, images, *args, **kwargs):
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
            self.images += len(images)
            return original(segmenter, images, *args, **kwargs)

        monkeypatch.setattr(Segmenter, "predict_batch", wrapped)


def test_interrupted_run_resumes_without_redoing_or_duplicating(tmp_path, tiny, monkeypatch, capsys):
    model_dir = _model_dir(tmp_path, tiny)
    _write_images(tmp_path / "images", 6)
    out = tmp_path / "out"
    args = ["--model", model_dir, "--images", str(tmp_path / "images"), "--prompt", "the circle", "--out", str(out),
            "--batch-size", "2"]
    counting = _Counting(monkeypatch, stop_at=3)
    assert _predict(*args) == 130  # interrupted during the third batch
    part = out / "predictions.part-00000-of-00001.jsonl"
    assert [json.loads(line)["id"] for line in part.read_text().splitlines()] == [f"img{i}.png" for i in range(4)]
    assert not (out / "predictions.jsonl").exists()
    part.write_text(part.read_text() + '{"id": "img4.png", "answer": "cut sho')  # a line cut by a kill

    counting = _Counting(monkeypatch)
    assert _predict(*args) == 0
    assert counting.images == 2  # img4 and img5 only
    records = _records(out)
    assert [r["id"] for r in records] == [f"img{i}.png" for i in range(6)]
    assert all("answer" in r and "error" not in r for r in records)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl"]
    assert "6 predictions, 0 failed (2 new, 4 already done)" in capsys.readouterr().out

    counting = _Counting(monkeypatch)
    before = (out / "predictions.jsonl").read_text()
    assert _predict(*args) == 0 and counting.calls == 0 and (out / "predictions.jsonl").read_text() == before


@pytest.mark.slow
def test_killed_process_resumes_without_redoing_or_duplicating(tmp_path, tiny, monkeypatch):
    model_dir = _model_dir(tmp_path, tiny)
    _write_images(tmp_path / "images", 12)
    out = tmp_path / "out"
    args = ["--model", model_dir, "--images", str(tmp_path / "images"), "--prompt", "the circle", "--out", str(out),
            "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "reasonseg", "predict", "--device", "cpu", "--max-new-tokens", "4",
               "--no-progress", *args]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / "predictions.part-00000-of-00001.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if part.is_file() and part.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    if process.poll() is not None:
        pytest.fail("the run finished (or died) before it could be killed")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = [json.loads(line)["id"] for line in part.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(written) < 12

    counting = _Counting(monkeypatch)
    assert _predict(*args) == 0
    records = _records(out)
    assert [r["id"] for r in records] == [f"img{i}.png" for i in range(12)]  # every id once, in order
    assert counting.images == 12 - len(set(written))


def test_folder_with_bad_entries_completes_and_names_them(tmp_path, tiny, capsys):
    model_dir = _model_dir(tmp_path, tiny)
    folder = tmp_path / "images"
    _write_images(folder, 1)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (folder / "x.png").mkdir()
    deep = (np.arange(24 * 40, dtype=np.uint32).reshape(24, 40) * 60).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I;16")
    (folder / "notes.txt").write_text("not an image, not a job")
    out = tmp_path / "out"
    args = ["--model", model_dir, "--images", str(folder), "--prompt", "the circle", "--out", str(out),
            "--batch-size", "4"]
    assert _predict(*args) == 0
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any("corrupt.png" in line and "not a readable image" in line for line in errors)
    assert any("x.png" in line and "is a directory" in line for line in errors)
    assert "2 predictions, 2 failed" in captured.out
    records = {r["id"]: r for r in _records(out)}
    assert sorted(records) == ["corrupt.png", "deep.png", "img0.png", "x.png"]
    assert "is a directory" in records["x.png"]["error"] and "answer" not in records["x.png"]
    assert "not a readable image" in records["corrupt.png"]["error"]
    assert records["deep.png"]["height"] == 24 and records["deep.png"]["width"] == 40
    assert "error" not in records["deep.png"] and records["deep.png"]["masks"]
    # nothing left to do; --fail-on-error turns the recorded failures into exit status 1
    assert _predict(*args, "--fail-on-error") == 1


def test_rle_round_trips_and_boxes_match_the_masks(tmp_path, tiny):
    rng = np.random.RandomState(3)
    for mask in [rng.rand(37, 53) > 0.6, np.zeros((5, 7), bool), np.ones((4, 9), bool)]:
        assert np.array_equal(rle_to_mask(mask_to_rle(mask)), mask)
    ring = np.zeros((20, 30), bool)
    ring[3:9, 11:25] = True
    assert mask_bbox(ring) == [11, 3, 14, 6]

    model_dir = _model_dir(tmp_path, tiny)
    _write_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    assert _predict("--model", model_dir, "--images", str(tmp_path / "images"), "--prompt", "the circle",
                    "--out", str(out), "--save-masks", "--save-overlays", "--coco-json", str(out / "coco.json")) == 0
    records = _records(out)
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco) == sum(len(r["masks"]) for r in records) > 0
    entries = iter(coco)
    for record in records:
        for index, entry in enumerate(record["masks"]):
            mask = rle_to_mask(entry["rle"])
            saved = np.asarray(Image.open(out / record["mask_files"][index])) > 0
            assert mask.shape == (record["height"], record["width"]) and np.array_equal(mask, saved)
            assert entry["area"] == int(mask.sum())
            rows, cols = np.nonzero(mask)
            expected = [int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1] if rows.size \
                else [0, 0, 0, 0]
            assert entry["bbox"] == expected
            result = next(entries)
            assert result["image_id"] == record["job_id"] and result["category_id"] == 1
            assert result["segmentation"] == entry["rle"] and result["bbox"] == entry["bbox"]
            assert result["score"] == entry["score"] and result["prompt"] == "the circle"
        overlay = Image.open(out / record["overlay_file"])
        assert overlay.size == (record["width"], record["height"])


def test_job_files_and_globs_are_read_with_clear_errors(tmp_path, capsys):
    _write_images(tmp_path / "data" / "a", 2)
    _write_images(tmp_path / "data" / "b", 1)
    jobs = jobs_from_images(str(tmp_path / "data" / "**" / "*.png"), ["q1", "q2"])
    assert [j.id for j in jobs] == ["a/img0.png", "a/img1.png", "b/img0.png"]
    assert jobs[0].record_ids() == ["a/img0.png#0", "a/img0.png#1"] and jobs[0].prompts == ("q1", "q2")

    path = tmp_path / "data" / "jobs.jsonl"
    path.write_text('{"id": 7, "image": "a/img0.png", "prompt": "p", "category_id": 3}\n\n'
                    '{"image": "b/img0.png", "force_seg": true}\n')
    read = read_jobs(path, default_prompts=["default"])
    assert read[0].id == "7" and read[0].image == str(tmp_path / "data" / "a" / "img0.png")
    assert read[0].category(0) == 3 and read[1].id == "b/img0.png"
    assert read[1].prompts == ("default",) and read[1].force_seg is True and read[0].force_seg is None

    for content, message in [
        ('{"image": "a.png", "prompt": "x"}\n{"image": "b.png", "prompt": "x"\n', r"jobs.jsonl:2 is not valid JSON"),
        ('{"id": "1", "image": "a.png", "prompt": "x"}\n{"id": "1", "image": "b.png", "prompt": "x"}\n',
         "id '1' is used twice"),
        ('{"prompt": "x"}\n', "needs \"image\""),
        ('{"image": "a.png", "prompt": "x", "promt": "y"}\n', "unknown keys \\['promt'\\]"),
        ('{"image": "a.png"}\n', "has no prompt"),
        ('{"image": "a.png", "prompts": ["x", ""]}\n', "empty prompt"),
        ('{"image": "a.png", "prompt": "x", "force_seg": "yes"}\n', "force_seg"),
    ]:
        path.write_text(content)
        with pytest.raises(InputError, match=message):
            read_jobs(path)
    with pytest.raises(InputError, match="not found"):
        jobs_from_images(str(tmp_path / "nowhere"), ["x"])
    with pytest.raises(InputError, match="no images"):
        jobs_from_images(str(tmp_path / "data" / "*.jpg"), ["x"])
    with pytest.raises(InputError, match="has no prompt"):
        jobs_from_images(str(tmp_path / "data" / "a"), [])

    # the CLI reads the job list before loading a model, and says what is wrong in one line
    path.write_text('{"image": "a.png", "prompt": "x", "promt": "y"}\n')
    code = main(["predict", "--model", str(tmp_path / "no-model"), "--jobs", str(path)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error:") and "promt" in err and "Traceback" not in err
    code = main(["predict", "--image", "a.png", "--prompt", "a", "--prompt", "b"])
    assert code == 1 and "exactly one --prompt" in capsys.readouterr().err


def test_run_jobs_shares_work_by_job_across_shards(tmp_path, tiny, monkeypatch):
    """Each of two shards (called in turn here) answers only its own jobs; the main one merges."""
    model, processor = tiny
    segmenter = Segmenter(model, processor)
    _write_images(tmp_path / "images", 3)
    jobs = jobs_from_images(str(tmp_path / "images"), ["the circle"])
    monkeypatch.setattr(batch_jobs.sharding, "wait_for_everyone", lambda: None)
    counting = _Counting(monkeypatch)
    out = tmp_path / "out"
    second = batch_jobs.run_jobs(segmenter, jobs, out, max_new_tokens=2, shard=batch_jobs.sharding.Shard(1, 2),
                                 progress=False)
    assert counting.images == 1 and second.predictions_path is None
    first = batch_jobs.run_jobs(segmenter, jobs, out, max_new_tokens=2, shard=batch_jobs.sharding.Shard(0, 2),
                                progress=False)
    assert counting.images == 3 and first.total_records == 3
    assert [r["id"] for r in _records(out)] == ["img0.png", "img1.png", "img2.png"]
