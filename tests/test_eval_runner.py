"""`reasonseg eval`: LISA's forced protocol against the reference fixture, [SEG] counting in generate mode, batching,
two processes, resume, report, refer data."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasonseg import Segmenter
from reasonseg.cli.main import main
from reasonseg.errors import InputError
from reasonseg.evaluation import evaluate, forced_predictions, lisa_question, load_dataset
from reasonseg.evaluation.metrics import mask_intersection_union
from reasonseg.inference.mask_io import rle_to_mask

from .conftest import REPO_ROOT, script_answers

SIZES = [(60, 80), (90, 40), (64, 64)]


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_reasonseg(folder: Path, count: int = 3, queries: int = 2) -> Path:
    """``count`` random images; sample i targets its top-left quarter, odd samples are sentence queries, sample 1
    has an ignore region."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(3)
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)).save(folder / f"s{i}.png")
        shapes = [{"label": "target", "points": rect(1, 1, w // 2, h // 2)}]
        if i == 1:
            shapes.append({"label": "ignore", "points": rect(w // 2 + 2, 0, w - 1, h // 3)})
        texts = [f"the shape number {i}" if i % 2 == 0 else f"Which shape is number {i}?"]
        texts += [f"phrasing {k} of {i}" for k in range(1, queries)]
        record = {"text": texts, "is_sentence": i % 2 == 1, "shapes": shapes}
        (folder / f"s{i}.json").write_text(json.dumps(record))
    return folder


def seg_happy(model, processor):
    """Bias the lm_head row of [SEG] so that the random model emits [SEG]s (masks get compared too)."""
    seg = processor.seg_token_id
    model.language_model.lm_head.weight.data[seg] += 0.5 * model.language_model.lm_head.weight.data[seg].sign()


def key_numbers(records):
    return [(r["key"], r["answer"], r["seg_count"], r["intersection"], r["union"], r["iou"], r["pred_rle"])
            for r in records]


# ---------------------------------------------------------------------------------------------------- LISA fixture


@pytest.fixture(scope="module")
def lisa_segmenter(lisa_fixture):
    return Segmenter.from_pretrained(str(lisa_fixture), precision="fp32", device="cpu")


def test_lisa_mode_reproduces_the_reference_forced_mask_logits(lisa_fixture, lisa_segmenter, tmp_path):
    cases = json.loads((lisa_fixture / "expected" / "forced.json").read_text())
    expected = [np.load(lisa_fixture / "expected" / f"{case['name']}.npz") for case in cases]
    image = Image.open(lisa_fixture / "inputs" / "image_a.png").convert("RGB")
    model, processor = lisa_segmenter.model, lisa_segmenter.processor
    rows = [(0, case["prompt"], case["answer"]) for case in cases]
    # the two conversations in one padded batch, and each alone
    together = forced_predictions(model, processor, [image], rows)
    alone = [forced_predictions(model, processor, [image], [row])[0] for row in rows]
    for case, reference, batched, single in zip(cases, expected, together, alone):
        assert batched.mask_logits.shape == tuple(case["pred_masks_shape"])
        np.testing.assert_allclose(batched.mask_logits, reference["pred_masks"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(single.mask_logits, reference["pred_masks"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(single.scores, reference["iou_predictions"][:, 0], atol=1e-5, rtol=0)

    # through `evaluate`: LISA's question about "the red circle" tokenises as forced_seg1's prompt, so with its
    # answer written in, the scored mask is the reference's logits > 0 and the IoU the reference's IoU
    case, reference = cases[0], expected[0]
    question = lisa_question("the red circle", False, processor.settings.image_token)
    ids = processor.encode(processor.conversation_prompt([(question, case["answer"])]))
    assert ids == reference["input_ids"][0].tolist()
    data = tmp_path / "circle.jsonl"
    data.write_text(json.dumps({"image": str(lisa_fixture / "inputs" / "image_a.png"),
                                "mask": str(lisa_fixture / "inputs" / "mask_a_circle.png"),
                                "prompt": "the red circle"}) + "\n")
    result = evaluate(lisa_segmenter, f"custom:{data}", mode="lisa", lisa_answer=case["answer"])
    (record,) = result.records
    truth = np.asarray(Image.open(lisa_fixture / "inputs" / "mask_a_circle.png")) > 0
    reference_logits = reference["pred_masks"][0]
    intersection, union = mask_intersection_union(reference_logits, truth)
    scored = rle_to_mask(record["pred_rle"])
    # measured: logits within 3e-7 of the reference, no pixel on the other side of 0; only a pixel within the 1e-5
    # tolerance of 0 could ever flip
    assert np.all(np.abs(reference_logits[scored != (reference_logits > 0)]) < 1e-5)
    assert (record["intersection"], record["union"]) == (intersection, union)
    assert record["seg_count"] == 1 and record["forced"] and record["answer"] == case["answer"]
    assert result.metrics["results"]["lisa"]["protocol"]["overall"]["giou"] == pytest.approx(
        intersection / (union + 1e-5), abs=1e-3)


# ---------------------------------------------------------------------------------------------------- generate mode


def test_generate_mode_counts_emitted_seg_tokens(tiny, tmp_path):
    model, processor = tiny
    segmenter = Segmenter(model, processor)
    folder = write_reasonseg(tmp_path / "rs", count=3, queries=1)
    seg, eos = processor.seg_token_id, processor.eos_token_id
    word = processor.encode("Sure", add_bos=False)[0]
    answers = [[word, seg, eos], [word, word, eos], [seg, word, seg, eos]]  # s0: one [SEG], s1: none, s2: two
    script_answers(model, processor, [token for answer in answers for token in answer])
    result = evaluate(segmenter, f"reasonseg:{folder}", mode="both", max_new_tokens=8)

    generated = [r for r in result.records if r["mode"] == "generate"]
    assert [r["seg_count"] for r in generated] == [1, 0, 2]
    assert not any(r["forced"] for r in generated)
    assert generated[1]["pred_empty"] and generated[1]["iou"] == 0.0 and generated[1]["intersection"] == 0
    assert "[SEG]" not in generated[1]["answer"] and generated[0]["answer"].count("[SEG]") == 1
    emitted = result.metrics["results"]["generate"]["protocol"]["seg_emitted"]
    assert emitted == {"share": pytest.approx(2 / 3), "count": 2, "of": 3, "several": 1}

    # several [SEG]s on a one-target item: the prediction is the union of their masks
    script_answers(model, processor, answers[2])
    item = [i for i in load_dataset("reasonseg", folder).items if i.id == "s2"][0]
    again = segmenter.predict(item.image_path, lisa_question(item.query, item.is_sentence), max_new_tokens=8)
    assert len(again.masks) == 2
    np.testing.assert_array_equal(rle_to_mask(generated[2]["pred_rle"]), again.masks[0] | again.masks[1])

    # lisa mode writes the answer in: one forced [SEG] each, whatever the model would say
    forced = [r for r in result.records if r["mode"] == "lisa"]
    assert [(r["seg_count"], r["forced"], r["answer"]) for r in forced] == [(1, True, "[SEG].")] * 3
    assert "[SEG] emitted" in result.table and "66.7% (2/3)" in result.table


# ---------------------------------------------------------------------------------------------------- batching


def test_batch_of_eight_equals_batch_of_one(tiny, tmp_path):
    model, processor = tiny
    seg_happy(model, processor)
    segmenter = Segmenter(model, processor)
    spec = f"reasonseg:{write_reasonseg(tmp_path / 'rs', count=3, queries=2)}"
    one = evaluate(segmenter, spec, mode="both", all_queries=True, batch_size=1, max_new_tokens=6)
    eight = evaluate(segmenter, spec, mode="both", all_queries=True, batch_size=8, max_new_tokens=6)
    assert len(one.records) == 12  # 3 images x 2 queries x 2 modes
    assert sum(r["seg_count"] for r in one.records if r["mode"] == "generate") > 0
    assert key_numbers(eight.records) == key_numbers(one.records)
    assert eight.metrics["results"] == one.metrics["results"]
    # --all-queries reports the first-query (LISA) numbers and the all-phrasings numbers
    assert one.metrics["results"]["lisa"]["protocol"]["overall"]["count"] == 3
    assert one.metrics["results"]["lisa"]["all_queries"]["overall"]["count"] == 6
    assert one.metrics["results"]["lisa"]["protocol"]["long"]["count"] == 1


# ---------------------------------------------------------------------------------------------------- resume, report


def test_resume_skips_scored_items_and_report_is_written(tiny, tmp_path):
    model, processor = tiny
    segmenter = Segmenter(model, processor)
    spec = f"reasonseg:{write_reasonseg(tmp_path / 'rs', count=3, queries=2)}"
    out = tmp_path / "out"
    full = evaluate(segmenter, spec, mode="lisa", all_queries=True, out_dir=out, batch_size=2)
    merged = out / "per_sample.jsonl"
    lines = merged.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [r["key"] for r in full.records]
    assert {"id", "query", "mode", "answer", "seg_count", "iou", "intersection", "union"} <= set(json.loads(lines[0]))

    # as if killed after 4 items: the rerun scores only the 2 missing ones, and ends with the same numbers
    merged.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    calls = []
    original = model.encode_sam_images
    model.encode_sam_images = lambda pixels: calls.append(pixels.shape[0]) or original(pixels)
    try:
        resumed = evaluate(segmenter, spec, mode="lisa", all_queries=True, out_dir=out, batch_size=2, report=True)
    finally:
        model.encode_sam_images = original
    assert sum(calls) == 1  # the two missing items are the two queries of one image, encoded once
    assert key_numbers(resumed.records) == key_numbers(full.records)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_sample.jsonl", "report.html", "run.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results"] == full.metrics["results"]

    report = (out / "report.html").read_text()
    assert report.count('<section class="sample">') == 6 and report.count("data:image/jpeg;base64,") == 18
    assert "overall gIoU" in report and "worst samples" in report

    # a finished run reruns nothing; another dataset in the same folder is refused
    calls.clear()
    model.encode_sam_images = lambda pixels: calls.append(pixels.shape[0]) or original(pixels)
    try:
        evaluate(segmenter, spec, mode="lisa", all_queries=True, out_dir=out)
    finally:
        model.encode_sam_images = original
    assert calls == []
    other = f"reasonseg:{write_reasonseg(tmp_path / 'other', count=1)}"
    with pytest.raises(InputError, match="holds results of another run"):
        evaluate(segmenter, other, mode="lisa", out_dir=out)
    # answers generated at one length are not mixed with answers of another
    with open(out / "per_sample.jsonl", "a") as handle:
        handle.write(json.dumps({"key": "s0#0|generate", "mode": "generate"}) + "\n")
    with pytest.raises(InputError, match="max_new_tokens 512, not 3"):
        evaluate(segmenter, spec, mode="generate", all_queries=True, out_dir=out, max_new_tokens=3)


# ---------------------------------------------------------------------------------------------------- refer data


def _write_refer(root: Path) -> Path:
    refer_root = root / "refer_seg"
    folder = refer_root / "grefcoco"
    folder.mkdir(parents=True)
    image_dir = refer_root / "images/mscoco/images/train2014"
    image_dir.mkdir(parents=True)
    Image.fromarray((np.random.RandomState(5).rand(24, 32, 3) * 255).astype(np.uint8)).save(image_dir / "a.jpg")
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 12, 0, 12]]},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[20, 4, 30, 4, 30, 20, 20, 20]]}]
    refs = [{"ref_id": 0, "image_id": 1, "ann_id": [10, 11], "split": "val",
             "sentences": [{"sent": "Both Boxes "}, {"sent": "the two boxes"}]},
            {"ref_id": 1, "image_id": 1, "ann_id": [-1], "split": "val", "sentences": [{"sent": "a purple cow"}]},
            {"ref_id": 2, "image_id": 1, "ann_id": [10], "split": "train", "sentences": [{"sent": "left box"}]}]
    (folder / "grefs(unc).json").write_text(json.dumps(refs))
    (folder / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 24, "width": 32}], "annotations": anns}))
    refcoco = refer_root / "refcoco"
    refcoco.mkdir()
    (refcoco / "refs(unc).p").write_bytes(pickle.dumps([{**refs[2], "ann_id": 10, "split": "val"}], protocol=2))
    (refcoco / "instances.json").write_text((folder / "instances.json").read_text())
    return refer_root


def test_refer_kinds_score_every_sentence_and_grefcoco_adds_n_acc(tiny, tmp_path):
    model, processor = tiny
    refer_root = _write_refer(tmp_path)
    data = load_dataset("grefcoco", refer_root)  # split defaults to val, as LISA validates
    assert data.split == "val"
    assert [(i.id, i.query, i.query_index, i.is_sentence) for i in data.items] == [
        ("1.0", "both boxes", 0, False), ("1.0", "the two boxes", 1, False), ("1.1", "a purple cow", 0, False)]
    target = data.items[0].load_target(24, 32)
    assert target.sum() == 10 * 12 + 10 * 16 and not data.items[2].load_target(24, 32).any()
    # the dataset's own folder works as PATH too
    assert len(load_dataset("refcoco", refer_root / "refcoco").items) == 1

    segmenter = Segmenter(model, processor)
    script_answers(model, processor, [processor.eos_token_id])  # generate: never a [SEG]
    result = evaluate(segmenter, data, mode="both", max_new_tokens=4)
    lisa = result.metrics["results"]["lisa"]["protocol"]
    generate = result.metrics["results"]["generate"]["protocol"]
    assert lisa["overall"]["count"] == 3 and "short" not in lisa
    # no [SEG]: no-target expression right (N-acc 1), both target expressions missed (T-acc 0)
    assert generate["no_target"] == {"n_acc": 1.0, "t_acc": 0.0, "no_target_count": 1, "target_count": 2}
    assert generate["overall"]["giou"] == pytest.approx(1 / 3)  # the empty/empty item scores 1, the others 0
    records = [r for r in result.records if r["mode"] == "lisa"]
    assert lisa["no_target"]["n_acc"] == float(records[2]["pred_empty"])
    assert "N-acc" in result.table


# ---------------------------------------------------------------------------------------------------- the command


def test_eval_command_rejects_bad_input_in_one_line(tmp_path, capsys):
    folder = write_reasonseg(tmp_path / "rs", count=1)
    cases = [
        (["--data", "coco:/x"], "unknown data kind 'coco'"),
        (["--data", str(folder)], "should be KIND:PATH"),
        (["--data", f"reasonseg:{tmp_path / 'missing'}"], "ReasonSeg folder not found"),
        (["--data", f"reasonseg:{folder}", "--split", "val"], "no split 'val'"),
        (["--data", f"reasonseg:{folder}", "--force-seg"], "--mode lisa forces"),
        (["--data", f"refcoco:{tmp_path}"], "referring dataset folder not found"),
    ]
    for extra, message in cases:
        assert main(["eval", "--no-progress", "--out", str(tmp_path / "o"), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_batch_one(tiny, tmp_path, capsys):
    model, processor = tiny
    seg_happy(model, processor)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    folder = write_reasonseg(tmp_path / "rs", count=3, queries=2)
    common = ["--model", str(model_dir), "--data", f"reasonseg:{folder}", "--all-queries", "--mode", "both",
              "--max-new-tokens", "4", "--no-progress"]
    assert main(["eval", *common, "--out", str(tmp_path / "one"), "--batch-size", "1"]) == 0
    printed = capsys.readouterr().out
    assert "lisa (forced [SEG])" in printed and "generate (free answer)" in printed

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(REPO_ROOT / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
               "-m", "reasonseg", "eval", *common, "--out", str(tmp_path / "two"), "--batch-size", "8"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("lisa (forced [SEG])") == 1  # only the main process prints

    one = [json.loads(line) for line in (tmp_path / "one/per_sample.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two/per_sample.jsonl").read_text().splitlines()]
    assert len(one) == 12 and key_numbers(two) == key_numbers(one)
    metrics_one = json.loads((tmp_path / "one/metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "two/metrics.json").read_text())
    assert metrics_two["results"] == metrics_one["results"] and metrics_two["settings"]["processes"] == 2
    assert not list((tmp_path / "two").glob("*.part-*"))


def test_lisa_question_puts_the_image_where_the_processor_does():
    assert lisa_question("the red circle", False) == (
        "<image>\n What is the red circle in this image? Please output segmentation mask.")  # LISA's own
    assert lisa_question(" Find what rolls. ", True, "<image>", "after_text") == (
        "Find what rolls. Please output segmentation mask.\n<image>")
