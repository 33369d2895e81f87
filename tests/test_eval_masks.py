"""`eval-masks` end to end on a generated folder: hand-computed gIoU/cIoU, and one line for each bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from reasonseg.cli.main import main
from reasonseg.errors import InputError
from reasonseg.evaluation.mask_eval import evaluate_mask_folder

HEIGHT, WIDTH = 4, 6
EPS = 1e-5


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def box(x0, y0, x1, y1):
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def write_sample(folder, sample_id, shapes, is_sentence):
    Image.new("RGB", (WIDTH, HEIGHT), (10, 20, 30)).save(folder / f"{sample_id}.jpg")
    record = {"text": [f"query about {sample_id}"], "is_sentence": is_sentence, "shapes": shapes}
    (folder / f"{sample_id}.json").write_text(json.dumps(record))


@pytest.fixture()
def gt_dir(tmp_path):
    """Three samples on 6x4 images.

    a (long query):  target x0..2 y0..1 (6 px)
    b (short query): target x0..1 y0..2 (6 px), ignore x3..5 y0..3 (12 px)
    c (short query): no target (only a flag shape)
    """
    folder = tmp_path / "gt"
    folder.mkdir()
    write_sample(folder, "a", [{"label": "target", "points": rect(0, 0, 2, 1)}], is_sentence=True)
    write_sample(folder, "b", [{"label": "target", "points": rect(0, 0, 1, 2)},
                               {"label": "ignore", "points": rect(3, 0, 5, 3)}], is_sentence=False)
    write_sample(folder, "c", [{"label": "flag", "points": rect(0, 0, 5, 3)}], is_sentence=False)
    return folder


def write_good_predictions(folder):
    """a: x1..3 y0..1 as bool .npy -> intersection 4, union 8.
    b: row 0 as a 0/255 PNG; x3..5 fall in the ignore region -> counted x0..2: intersection 2, union 7.
    c: all-negative logits .npy -> empty, empty target -> union 0, IoU 1."""
    folder.mkdir(exist_ok=True)
    np.save(folder / "a.npy", box(1, 0, 3, 1))
    Image.fromarray(box(0, 0, 5, 0).astype(np.uint8) * 255).save(folder / "b.png")
    np.save(folder / "c.npy", np.full((HEIGHT, WIDTH), -4.0, dtype=np.float32))
    return folder


IOU_A, IOU_B, IOU_C = 4 / (8 + EPS), 2 / (7 + EPS), 1.0


def test_scores_match_hand_computed_numbers(tmp_path, gt_dir):
    result = evaluate_mask_folder(write_good_predictions(tmp_path / "pred"), gt_dir)
    assert result["problems"] == []
    assert result["count"] == 3
    assert result["giou"] == pytest.approx((IOU_A + IOU_B + IOU_C) / 3, rel=1e-12)
    assert result["ciou"] == pytest.approx(6 / 15, rel=1e-9)
    assert result["per_sample"] == {
        "a": {"intersection": 4, "union": 8, "iou": pytest.approx(IOU_A)},
        "b": {"intersection": 2, "union": 7, "iou": pytest.approx(IOU_B)},
        "c": {"intersection": 0, "union": 0, "iou": 1.0},
    }
    assert result["by_query_kind"]["long"] == {"giou": pytest.approx(IOU_A), "ciou": pytest.approx(0.5), "count": 1}
    assert result["by_query_kind"]["short"] == {
        "giou": pytest.approx((IOU_B + IOU_C) / 2), "ciou": pytest.approx(2 / 7), "count": 2}


def test_integer_npy_and_colour_png_predictions(tmp_path, gt_dir):
    pred = write_good_predictions(tmp_path / "pred")
    np.save(pred / "a.npy", box(1, 0, 3, 1).astype(np.int64))  # 0/1 integers
    (pred / "b.png").unlink()
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[0, :, 1] = 200  # only the green channel lit on row 0
    Image.fromarray(rgb).save(pred / "b.png")
    result = evaluate_mask_folder(pred, gt_dir)
    assert result["problems"] == [] and result["ciou"] == pytest.approx(6 / 15)


def test_cli_prints_scores_and_writes_json(tmp_path, gt_dir, capsys):
    pred = write_good_predictions(tmp_path / "pred")
    out = tmp_path / "report" / "scores.json"
    code = main(["eval-masks", "--pred-dir", str(pred), "--gt-dir", str(gt_dir), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    lines = captured.out.splitlines()
    assert lines[:3] == [f"gIoU {(IOU_A + IOU_B + IOU_C) / 3:.4f}", "cIoU 0.4000", "count 3"]
    assert lines[0] == "gIoU 0.5952"
    written = json.loads(out.read_text())
    assert written["count"] == 3 and written["ciou"] == pytest.approx(0.4)
    assert written["per_sample"]["b"] == {"intersection": 2, "union": 7, "iou": pytest.approx(IOU_B)}


def write_bad_predictions(folder):
    """a missing, b of the wrong size, c a corrupt PNG, plus a stray prediction for an unknown id."""
    folder.mkdir()
    np.save(folder / "b.npy", np.ones((5, 5), dtype=bool))
    (folder / "c.png").write_bytes(b"\x89PNG but not really")
    np.save(folder / "zzz.npy", np.ones((HEIGHT, WIDTH), dtype=bool))
    return folder


def test_bad_predictions_are_reported_and_scored_empty(tmp_path, gt_dir, capsys):
    pred = write_bad_predictions(tmp_path / "pred")
    result = evaluate_mask_folder(pred, gt_dir)
    # every sample scored with an empty prediction: a 0, b 0, c (no target) 1
    assert result["count"] == 3
    assert result["giou"] == pytest.approx(1 / 3) and result["ciou"] == 0.0
    assert [v["union"] for v in result["per_sample"].values()] == [6, 6, 0]
    problems = result["problems"]
    assert len(problems) == 4
    assert problems[0].startswith(f"{pred / 'a.npy'}: missing prediction for a.json")
    assert problems[1].startswith(f"{pred / 'b.npy'}: prediction is 5x5 (WxH) but image b.jpg is 6x4")
    assert problems[2].startswith(f"{pred / 'c.png'}: unreadable prediction")
    assert problems[3].startswith(f"{pred / 'zzz.npy'}: stray prediction") and "no sample 'zzz'" in problems[3]

    code = main(["eval-masks", "--pred-dir", str(pred), "--gt-dir", str(gt_dir)])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.splitlines()[:3] == ["gIoU 0.3333", "cIoU 0.0000", "count 3"]
    assert captured.err.splitlines()[:4] == problems


@pytest.mark.parametrize(
    "make_bad,fragment",
    [
        (lambda p: (p / "a.npy").unlink(), "a.npy: missing prediction"),
        (lambda p: np.save(p / "b.npy", np.zeros((4, 5), bool)) or (p / "b.png").unlink(), "b.npy: prediction is 5x4"),
        (lambda p: (p / "c.npy").write_bytes(b"garbage"), "c.npy: unreadable prediction"),
        (lambda p: np.save(p / "c.npy", np.zeros((1, 4, 6))), "c.npy: expected an HxW array, got shape (1, 4, 6)"),
        (lambda p: np.save(p / "a.npy", np.array([["x"] * 6] * 4)), "a.npy: a prediction must be a bool or numeric"),
        (lambda p: np.save(p / "stray.npy", np.zeros((4, 6))), "stray.npy: stray prediction"),
        (lambda p: Image.new("L", (6, 4)).save(p / "a.png"), "a.npy: ambiguous, a.npy and a.png both exist"),
    ],
    ids=["missing", "wrong_size", "corrupt_npy", "three_dims", "string_dtype", "stray", "ambiguous"],
)
def test_each_bad_prediction_alone(tmp_path, gt_dir, capsys, make_bad, fragment):
    pred = write_good_predictions(tmp_path / "pred")
    make_bad(pred)
    result = evaluate_mask_folder(pred, gt_dir)
    assert len(result["problems"]) == 1 and fragment in result["problems"][0]
    assert str(pred) in result["problems"][0]
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        evaluate_mask_folder(pred, gt_dir, strict=True)

    code = main(["eval-masks", "--pred-dir", str(pred), "--gt-dir", str(gt_dir), "--strict"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_ground_truth_problems_are_reported_and_not_called_stray(tmp_path, gt_dir):
    pred = write_good_predictions(tmp_path / "pred")
    (gt_dir / "d.json").write_text("{broken")
    Image.new("RGB", (WIDTH, HEIGHT)).save(gt_dir / "d.jpg")
    np.save(pred / "d.npy", np.zeros((HEIGHT, WIDTH), bool))
    result = evaluate_mask_folder(pred, gt_dir)
    assert result["count"] == 3 and result["ciou"] == pytest.approx(6 / 15)
    assert len(result["problems"]) == 1 and result["problems"][0].startswith(f"{gt_dir / 'd.json'}: unreadable JSON")
    with pytest.raises(InputError, match="d.json: unreadable JSON"):
        evaluate_mask_folder(pred, gt_dir, strict=True)


def test_missing_directories_are_one_line_errors(tmp_path, gt_dir, capsys):
    code = main(["eval-masks", "--pred-dir", str(tmp_path / "nope"), "--gt-dir", str(gt_dir)])
    assert code == 1 and "prediction directory not found" in capsys.readouterr().err
    (tmp_path / "pred").mkdir()
    (tmp_path / "empty_gt").mkdir()
    code = main(["eval-masks", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "empty_gt")])
    assert code == 1 and "no usable ReasonSeg samples" in capsys.readouterr().err


def test_data_render_masks_verb(tmp_path, gt_dir, capsys):
    from reasonseg.cli import data

    parser = argparse.ArgumentParser(prog="reasonseg")
    data.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["data", "render-masks", str(gt_dir), "--out", str(tmp_path / "masks")])
    assert args.func(args) == 0
    assert "wrote masks of 3 sample(s)" in capsys.readouterr().out
    view = np.asarray(Image.open(tmp_path / "masks" / "b" / "labeled_mask.png"))
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[:, 3:] = 128
    expected[0:3, 0:2] = 255
    assert np.array_equal(view, expected)
    assert not np.asarray(Image.open(tmp_path / "masks" / "c" / "target_mask.png")).any()
