"""mask_io: COCO RLE round trips, boxes and areas, LISA-style overlays, the per-mask files and the JSON record."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from reasonseg.errors import InputError
from reasonseg.inference.mask_io import (
    MASK_COLORS,
    mask_area,
    mask_bbox,
    mask_color,
    mask_record,
    mask_to_rle,
    overlay_masks,
    rle_to_mask,
    save_prediction_files,
    write_prediction_json,
)


def _random_masks():
    rng = np.random.default_rng(0)
    masks = [
        np.zeros((7, 9), bool),
        np.ones((7, 9), bool),
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
    ]
    for _ in range(12):
        height, width = rng.integers(1, 60, size=2)
        masks.append(rng.random((height, width)) < rng.random())
    blob = np.zeros((40, 50), bool)
    blob[5:30, 12:44] = True
    masks.append(blob)
    return masks


def _image(height=24, width=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _lisa_blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """LISA chat.py's overlay, written as it is there."""
    save_img = image.copy()
    save_img[mask] = (image * 0.5 + mask[:, :, None].astype(np.uint8) * np.array([255, 0, 0]) * 0.5)[mask]
    return save_img


def _leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


# ---------------------------------------------------------------- RLE, box, area


@pytest.mark.parametrize("mask", _random_masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}")
def test_rle_round_trip_and_json(mask):
    rle = mask_to_rle(mask)
    assert rle["size"] == [mask.shape[0], mask.shape[1]]
    assert isinstance(rle["counts"], str)
    decoded = rle_to_mask(json.loads(json.dumps(rle)))
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)
    # the same string pycocotools itself produces, so other COCO tools read it
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == reference["counts"].decode()


def test_rle_accepts_bytes_counts_and_uncompressed_counts():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:5] = True
    rle = mask_to_rle(mask)
    np.testing.assert_array_equal(rle_to_mask({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
    # uncompressed RLE counts alternating runs of 0s and 1s in column-major order
    uncompressed = {"size": [4, 5], "counts": [9, 2, 2, 2, 2, 2, 1]}
    np.testing.assert_array_equal(rle_to_mask(uncompressed), mask)


def test_nonzero_values_are_foreground():
    mask = np.array([[0, 255, 1], [0, 0, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask)), mask != 0)
    assert mask_area(mask) == 3
    assert mask_bbox(mask) == [1, 0, 2, 2]


@pytest.mark.parametrize("bad", [{"counts": "abc"}, {"size": [2, 2]}, "not a dict", {"size": [2, 2], "counts": 5}])
def test_malformed_rle(bad):
    with pytest.raises(InputError):
        rle_to_mask(bad)


@pytest.mark.parametrize("mask", _random_masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}")
def test_bbox_and_area_match_np_where_extents(mask):
    rows, cols = np.where(mask)
    if rows.size == 0:
        assert mask_bbox(mask) == [0, 0, 0, 0]
    else:
        expected = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        assert mask_bbox(mask) == expected
        assert mask_bbox(mask) == [int(v) for v in coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))))]
    assert all(type(v) is int for v in mask_bbox(mask))
    assert mask_area(mask) == int(mask.sum()) and type(mask_area(mask)) is int


def test_bbox_known_values():
    mask = np.zeros((10, 12), bool)
    mask[3, 7] = True
    assert mask_bbox(mask) == [7, 3, 1, 1]
    mask[8, 2] = True
    assert mask_bbox(mask) == [2, 3, 6, 6]
    assert mask_bbox(np.ones((10, 12), bool)) == [0, 0, 12, 10]


def test_mask_record():
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:5] = True
    record = mask_record(mask)
    assert list(record) == ["rle", "area", "bbox"]
    assert record["area"] == 9 and record["bbox"] == [2, 1, 3, 3]
    np.testing.assert_array_equal(rle_to_mask(record["rle"]), mask)
    scored = mask_record(mask, score=np.float32(0.75))
    assert scored["score"] == 0.75 and type(scored["score"]) is float
    assert mask_record(mask, score=float("nan"))["score"] is None
    json.dumps(scored, allow_nan=False)


def test_masks_must_be_two_dimensional():
    with pytest.raises(InputError):
        mask_to_rle(np.zeros((2, 3, 1), bool))
    with pytest.raises(InputError):
        mask_bbox(np.zeros(5, bool))


# ---------------------------------------------------------------- overlays


def test_first_colour_is_lisa_red_and_colours_are_distinct():
    assert MASK_COLORS[0] == (255, 0, 0) == mask_color(0)
    colours = [mask_color(i) for i in range(40)]
    assert len(set(colours)) == 40
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)


def test_overlay_single_mask_is_exactly_lisas_red_blend():
    image = _image()
    mask = np.zeros(image.shape[:2], bool)
    mask[4:15, 6:20] = True
    out = overlay_masks(image, [mask])
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, _lisa_blend(image, mask))
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_overlay_known_pixel_values():
    image = np.array([[[0, 0, 0], [255, 255, 255], [100, 51, 3]]], dtype=np.uint8)
    out = overlay_masks(image, [np.ones((1, 3), bool)])
    np.testing.assert_array_equal(out[0], [[127, 0, 0], [255, 127, 127], [177, 25, 1]])


def test_overlay_several_masks_get_their_own_colours():
    image = _image()
    first, second = np.zeros((24, 32), bool), np.zeros((24, 32), bool)
    first[:10, :10] = True
    second[12:, 16:] = True
    out = overlay_masks(image, [first, second], alpha=0.4)
    for mask, colour in [(first, MASK_COLORS[0]), (second, MASK_COLORS[1])]:
        expected = (image[mask] * 0.6 + np.array(colour) * 0.4).astype(np.uint8)
        np.testing.assert_array_equal(out[mask], expected)
    untouched = ~(first | second)
    np.testing.assert_array_equal(out[untouched], image[untouched])


def test_overlay_overlapping_masks_blend_in_order_and_custom_colours():
    image = np.full((2, 2, 3), 100, np.uint8)
    a, b = np.array([[1, 1], [0, 0]], bool), np.array([[0, 1], [0, 1]], bool)
    out = overlay_masks(image, [a, b], alpha=0.5, colors=[(0, 0, 200), (200, 0, 0)])
    np.testing.assert_array_equal(out[0, 0], [50, 50, 150])
    np.testing.assert_array_equal(out[0, 1], [125, 25, 75])  # b over a: (50, 50, 150) * 0.5 + (200, 0, 0) * 0.5
    np.testing.assert_array_equal(out[1, 1], [150, 50, 50])
    np.testing.assert_array_equal(out[1, 0], [100, 100, 100])


def test_overlay_accepts_pil_and_leaves_the_input_alone():
    image = _image()
    original = image.copy()
    mask = np.eye(24, 32, dtype=bool)
    np.testing.assert_array_equal(overlay_masks(Image.fromarray(image), [mask]), overlay_masks(image, [mask]))
    np.testing.assert_array_equal(image, original)
    np.testing.assert_array_equal(overlay_masks(image, []), image)


def test_overlay_alpha_extremes():
    image = _image()
    mask = np.zeros((24, 32), bool)
    mask[::2] = True
    np.testing.assert_array_equal(overlay_masks(image, [mask], alpha=0.0), image)
    full = overlay_masks(image, [mask], alpha=1.0)
    np.testing.assert_array_equal(full[mask], np.broadcast_to([255, 0, 0], full[mask].shape))


def test_overlay_errors():
    image = _image()
    with pytest.raises(InputError, match="24x32"):
        overlay_masks(image, [np.zeros((32, 24), bool)])
    with pytest.raises(InputError, match="colour"):
        overlay_masks(image, [np.zeros((24, 32), bool)] * 2, colors=[(1, 2, 3)])
    with pytest.raises(InputError, match="alpha"):
        overlay_masks(image, [], alpha=1.5)


# ---------------------------------------------------------------- files


def test_save_prediction_files_names_and_contents(tmp_path):
    rows, cols = np.mgrid[0:40, 0:56]
    image = np.stack([rows * 6, cols * 4, 200 - rows * 2 - cols], axis=-1).astype(np.uint8)  # smooth: JPEG-friendly
    masks = [np.zeros((40, 56), bool), np.zeros((40, 56), bool)]
    masks[0][5:25, 10:40] = True
    masks[1][20:38, 30:50] = True
    out_dir = tmp_path / "nested" / "out"
    written = save_prediction_files(Image.fromarray(image), masks, out_dir, "cat")
    assert written == [
        out_dir / "cat_mask_0.png",
        out_dir / "cat_masked_img_0.jpg",
        out_dir / "cat_mask_1.png",
        out_dir / "cat_masked_img_1.jpg",
    ]
    assert sorted(os.listdir(out_dir)) == sorted(p.name for p in written)
    for index, mask in enumerate(masks):
        with Image.open(out_dir / f"cat_mask_{index}.png") as png:
            assert png.format == "PNG" and png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), mask.astype(np.uint8) * 255)
        with Image.open(out_dir / f"cat_masked_img_{index}.jpg") as jpeg:
            assert jpeg.format == "JPEG" and jpeg.mode == "RGB" and jpeg.size == (56, 40)
            decoded = np.asarray(jpeg).astype(int)
        expected = _lisa_blend(image, mask).astype(int)
        # JPEG is lossy; quality 95 keeps the error small, while the red blend shifts mask pixels a lot
        assert np.abs(decoded - expected).mean() < 6
        assert np.abs(decoded - image.astype(int))[mask].mean() > 30


def test_save_prediction_files_with_no_masks_writes_nothing(tmp_path):
    assert save_prediction_files(_image(), [], tmp_path / "empty", "x") == []
    assert os.listdir(tmp_path / "empty") == []


@pytest.mark.parametrize("name", ["", "a/b", "..", "a\\b"])
def test_save_prediction_files_rejects_names_with_directories(tmp_path, name):
    with pytest.raises(InputError):
        save_prediction_files(_image(), [np.zeros((24, 32), bool)], tmp_path, name)


def test_write_prediction_json(tmp_path):
    masks = [np.zeros((8, 10), bool), np.zeros((8, 10), bool)]
    masks[0][2:5, 3:9] = True
    path = tmp_path / "out" / "cat.json"
    returned = write_prediction_json(
        path,
        "Which animal would catch mice? Größe egal.",
        "It is [SEG].",
        [masks[0], mask_record(masks[1], score=0.5)],
        extra={"seg_forced": np.bool_(False), "n_tokens": np.int64(7), "logits": np.array([0.5, 1.0])},
    )
    assert returned == path
    text = path.read_text(encoding="utf-8")
    record = json.loads(text)
    assert list(record) == ["prompt", "answer", "masks", "seg_forced", "n_tokens", "logits"]
    assert record["prompt"] == "Which animal would catch mice? Größe egal." and "Größe" in text
    assert record["answer"] == "It is [SEG]."
    assert record["seg_forced"] is False and record["n_tokens"] == 7 and record["logits"] == [0.5, 1.0]
    first, second = record["masks"]
    assert first == {"rle": mask_to_rle(masks[0]), "area": 18, "bbox": [3, 2, 6, 3]}
    assert second == {"rle": mask_to_rle(masks[1]), "area": 0, "bbox": [0, 0, 0, 0], "score": 0.5}
    np.testing.assert_array_equal(rle_to_mask(first["rle"]), masks[0])
    assert _leftovers(path.parent) == []


def test_write_prediction_json_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "cat.json"
    write_prediction_json(path, "first", "one", [])
    before = path.read_text()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_prediction_json(path, "second", "two", [np.ones((2, 2), bool)])
    assert path.read_text() == before  # the old record survives a failed write
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    write_prediction_json(path, "second", "two", [])
    assert json.loads(path.read_text())["prompt"] == "second"


def test_write_prediction_json_refuses_extra_keys_that_clash(tmp_path):
    with pytest.raises(InputError, match="masks"):
        write_prediction_json(tmp_path / "x.json", "p", "a", [], extra={"masks": []})
    assert not (tmp_path / "x.json").exists()
