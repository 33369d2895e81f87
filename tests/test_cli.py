"""The CLI writes what it promises and turns bad input into one-line errors."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from reasonseg.cli.main import main


def _save_tiny(tmp_path, tiny):
    model, processor = tiny
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_predict_writes_masks_overlays_and_json(tmp_path, tiny, rgb_image, capsys):
    model_dir = _save_tiny(tmp_path, tiny)
    rgb_image.save(tmp_path / "scene.png")
    out = tmp_path / "out"
    code = main(["predict", "--model", model_dir, "--image", str(tmp_path / "scene.png"), "--prompt", "the circle",
                 "--out", str(out), "--max-new-tokens", "4", "--force-seg", "--device", "cpu"])
    assert code == 0
    record = json.loads((out / "scene.json").read_text())
    assert record["prompt"] == "the circle" and len(record["masks"]) == 1
    mask = np.asarray(Image.open(out / "scene_mask_0.png")) > 0
    assert mask.shape == (60, 80)
    decoded = mask_utils.decode({"size": record["masks"][0]["rle"]["size"], "counts": record["masks"][0]["rle"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask) and record["masks"][0]["area"] == int(mask.sum())
    assert (out / "scene_masked_img_0.jpg").is_file()


def test_predict_takes_the_prompt_as_a_positional_argument(tmp_path, tiny, rgb_image, capsys):
    model_dir = _save_tiny(tmp_path, tiny)
    rgb_image.save(tmp_path / "scene.png")
    out = tmp_path / "out"
    code = main(["predict", "--model", model_dir, "--image", str(tmp_path / "scene.png"), "the vessel",
                 "--out", str(out), "--max-new-tokens", "4", "--force-seg", "--device", "cpu"])
    assert code == 0 and json.loads((out / "scene.json").read_text())["prompt"] == "the vessel"
    code = main(["predict", "--model", model_dir, "--image", str(tmp_path / "scene.png"), "the vessel",
                 "--prompt", "the circle", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "exactly one --prompt" in err


def test_bad_inputs_give_one_line_errors(tmp_path, tiny, capsys):
    model_dir = _save_tiny(tmp_path, tiny)
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    (tmp_path / "dir.png").mkdir()
    for image, message in [("missing.png", "not found"), ("corrupt.png", "not a readable image"), ("dir.png", "is a directory")]:
        code = main(["predict", "--model", model_dir, "--image", str(tmp_path / image), "--prompt", "x",
                     "--out", str(tmp_path / "o"), "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and any(line.startswith("error:") and message in line for line in err)
    # no image to read: said before any model is loaded (this model path does not exist)
    code = main(["predict", "--model", str(tmp_path / "no-model"), "--image", str(tmp_path / "missing.png"), "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: image") and "not found" in err[-1]
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    code = main(["predict", "--model", str(tmp_path / "no-model"), "--image", str(tmp_path / "corrupt.png"), "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: image") and "not a readable image" in err[-1]
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    code = main(["predict", "--model", model_dir, "--image", str(tmp_path / "x.png"), "--prompt", "x", "--precision", "fp8"])
    err = capsys.readouterr().err
    assert code == 1 and "unknown precision 'fp8'" in err and "Traceback" not in err
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    code = main(["predict", "--model", str(tmp_path / "notamodel"), "--image", str(tmp_path / "x.png"), "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 1 and "'bert'" in err and "reasonseg loads" in err


def test_chat_loop_answers_reports_errors_and_continues(tmp_path, tiny, rgb_image, monkeypatch, capsys):
    import io

    model_dir = _save_tiny(tmp_path, tiny)
    rgb_image.save(tmp_path / "scene.png")
    lines = ["the circle", str(tmp_path / "missing.png"), "the circle", str(tmp_path / "scene.png"),
             "/new", "the circle", str(tmp_path / "scene.png"), "/quit", "never asked"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code = main(["chat", "--model", model_dir, "--device", "cpu", "--max-new-tokens", "3", "--force-seg",
                 "--vis-save-path", str(tmp_path / "vis")])
    captured = capsys.readouterr()
    assert code == 0
    assert "error: image" in captured.err and "not found" in captured.err
    assert "text_output:" in captured.out and (tmp_path / "vis" / "scene_mask_0.png").is_file()
    assert "/new to start a new conversation" in captured.out and "a new conversation:" in captured.out
    answers = [line for line in captured.out.split("Please input") if "text_output:" in line]
    assert len(answers) == 2  # "/quit" left before "never asked"
    first, after_new = (a.split("text_output:")[1].splitlines()[0] for a in answers)
    assert after_new == first  # the same first question of a new conversation gets the same answer
