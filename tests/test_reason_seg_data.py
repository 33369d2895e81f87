"""The ReasonSeg reader: both JSON spellings, LISA's painting order, and a clear line for each malformed input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from reasonseg.data.reason_seg import (
    ignore_mask,
    image_size,
    list_samples,
    load_label_map,
    read_annotation,
    render_masks,
    target_mask,
)
from reasonseg.errors import InputError

HEIGHT, WIDTH = 6, 8


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_sample(folder, sample_id, annotation, size=(WIDTH, HEIGHT), suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 80, 120)).save(folder / f"{sample_id}{suffix}")
    (folder / f"{sample_id}.json").write_text(json.dumps(annotation))


def annotation(shapes, text="the thing that holds water", is_sentence=True):
    return {"text": text, "is_sentence": is_sentence, "shapes": shapes}


def box(x0, y0, x1, y1, value=1):
    array = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    array[y0 : y1 + 1, x0 : x1 + 1] = value
    return array


def test_label_map_paints_largest_first_and_skips_flags(tmp_path):
    shapes = [
        {"label": "ignore", "points": rect(2, 1, 3, 2), "shape_type": "polygon"},  # 4 px, inside the target
        {"label": "target", "points": rect(0, 0, 5, 3)},  # 24 px
        {"label": "flag", "points": rect(0, 0, 7, 5)},  # would cover everything
        {"label": "target", "points": rect(6.9, 4.2, 7.5, 5.99)},  # truncated to x 6..7, y 4..5
    ]
    write_sample(tmp_path, "a", annotation(shapes))
    [sample] = list_samples(tmp_path)
    label_map = load_label_map(sample)
    expected = box(0, 0, 5, 3)
    expected[1:3, 2:4] = 255
    expected[4:6, 6:8] = 1
    assert label_map.dtype == np.uint8 and label_map.shape == (HEIGHT, WIDTH)
    assert np.array_equal(label_map, expected)
    assert np.array_equal(load_label_map(sample.json_path, HEIGHT, WIDTH), expected)
    assert target_mask(label_map).sum() == 24 - 4 + 4 and ignore_mask(label_map).sum() == 4
    assert (sample.id, sample.queries, sample.is_sentence, sample.image_size) == (
        "a", ["the thing that holds water"], True, (HEIGHT, WIDTH))


def test_smaller_target_inside_ignore_stays_target(tmp_path):
    shapes = [{"label": "target", "points": rect(1, 1, 2, 2)}, {"label": "Ignore", "points": rect(0, 0, 4, 4)}]
    write_sample(tmp_path, "b", annotation(shapes))
    expected = box(0, 0, 4, 4, 255)
    expected[1:3, 1:3] = 1
    assert np.array_equal(load_label_map(list_samples(tmp_path)[0]), expected)


def test_equal_areas_paint_the_first_listed_last(tmp_path):
    shapes = [{"label": "target", "points": rect(0, 0, 2, 1)}, {"label": "ignore", "points": rect(1, 0, 3, 1)}]
    write_sample(tmp_path, "tie", annotation(shapes))
    expected = box(1, 0, 3, 1, 255)
    expected[0:2, 0:3] = 1
    assert np.array_equal(load_label_map(list_samples(tmp_path)[0]), expected)


def test_category_and_flat_polygon_variant_reads_the_same(tmp_path):
    plain = [{"label": "target", "points": rect(0, 0, 5, 3)}, {"label": "ignore", "points": rect(2, 1, 3, 2)}]
    variant = [
        {"category": "target", "polygon": [0, 0, 5, 0, 5, 3, 0, 3]},
        {"category": "ignore", "polygon": [2, 1, 3, 1, 3, 2, 2, 2]},
        {"category": "flag", "polygon": [0, 0, 7, 0, 7, 5]},
    ]
    write_sample(tmp_path, "plain", annotation(plain, text=["q1", "q2"], is_sentence=False))
    write_sample(tmp_path, "variant", annotation(variant), suffix=".jpg")
    plain_sample, variant_sample = list_samples(tmp_path)
    assert (plain_sample.id, variant_sample.id) == ("plain", "variant")
    assert plain_sample.queries == ["q1", "q2"] and plain_sample.is_sentence is False
    assert variant_sample.image_path.name == "variant.jpg"
    assert np.array_equal(load_label_map(plain_sample), load_label_map(variant_sample))
    assert load_label_map(variant_sample).sum() == 20 * 1 + 4 * 255


def test_two_point_rectangle_is_filled(tmp_path):
    rectangle = {"label": "target", "points": [[1, 1], [3, 4]], "shape_type": "rectangle"}
    write_sample(tmp_path, "r", annotation([rectangle]))
    problems = []
    [sample] = list_samples(tmp_path, problems=problems)
    assert problems == [] and np.array_equal(load_label_map(sample), box(1, 1, 3, 4))


def test_exif_rotated_image_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (8, 6)).save(tmp_path / "rot.jpg", exif=exif)
    assert image_size(tmp_path / "rot.jpg") == (8, 6)


def test_explanations_attach_by_image_name(tmp_path):
    split = tmp_path / "ReasonSeg" / "train"
    write_sample(split, "e1", annotation([{"label": "target", "points": rect(0, 0, 1, 1)}]), suffix=".jpg")
    write_sample(split, "e2", annotation([{"label": "target", "points": rect(0, 0, 1, 1)}]), suffix=".jpg")
    (tmp_path / "ReasonSeg" / "explanatory").mkdir()
    (tmp_path / "ReasonSeg" / "explanatory" / "train.json").write_text(
        json.dumps([{"image": "e1.jpg", "query": "what holds water?", "outputs": "The cup holds water."}]))
    e1, e2 = list_samples(split)
    assert e1.explanation == "The cup holds water." and e2.explanation is None
    (tmp_path / "other.json").write_text(json.dumps([{"image": "e2.jpg", "outputs": "Another."}]))
    assert [s.explanation for s in list_samples(split, explanatory=tmp_path / "other.json")] == [None, "Another."]


def test_render_masks_writes_view_target_and_ignore_pngs(tmp_path):
    shapes = [{"label": "target", "points": rect(0, 0, 5, 3)}, {"label": "ignore", "points": rect(2, 1, 3, 2)}]
    write_sample(tmp_path / "gt", "a", annotation(shapes))
    [sample_dir] = render_masks(tmp_path / "gt", tmp_path / "out")
    assert sample_dir == tmp_path / "out" / "a"
    view = np.asarray(Image.open(sample_dir / "labeled_mask.png"))
    expected_view = box(0, 0, 5, 3, 255)
    expected_view[1:3, 2:4] = 128
    assert np.array_equal(view, expected_view)
    target = np.asarray(Image.open(sample_dir / "target_mask.png"))
    assert np.array_equal(target, np.where(expected_view == 255, 255, 0).astype(np.uint8))
    ignore = np.asarray(Image.open(sample_dir / "ignore_mask.png"))
    assert np.array_equal(ignore, box(2, 1, 3, 2, 255))


GOOD_SHAPES = [{"label": "target", "points": rect(0, 0, 1, 1)}]
# (name, writer, expected fragment of the problem line); each writer makes one broken sample in the folder
MALFORMED = [
    ("json_without_image", lambda d: (d / "m.json").write_text(json.dumps(annotation(GOOD_SHAPES))),
     "m.json: no image m.jpg or m.png"),
    ("image_without_json", lambda d: Image.new("RGB", (4, 4)).save(d / "m.png"), "m.png: no annotation m.json"),
    ("unreadable_json", lambda d: (Image.new("RGB", (4, 4)).save(d / "m.png"), (d / "m.json").write_text("{oops")),
     "m.json: unreadable JSON"),
    ("missing_text", lambda d: write_sample(d, "m", {"is_sentence": True, "shapes": GOOD_SHAPES}),
     "m.json: missing 'text'"),
    ("empty_text", lambda d: write_sample(d, "m", annotation(GOOD_SHAPES, text=[])), "m.json: 'text' is empty"),
    ("missing_is_sentence", lambda d: write_sample(d, "m", {"text": "x", "shapes": GOOD_SHAPES}),
     "m.json: missing 'is_sentence'"),
    ("missing_shapes", lambda d: write_sample(d, "m", {"text": "x", "is_sentence": False}), "m.json: missing 'shapes'"),
    ("bad_points", lambda d: write_sample(d, "m", annotation([{"label": "target", "points": [[1, 2, 3]]}])),
     "m.json: shape 0: 'points' must be a list of [x, y] pairs"),
    ("odd_polygon", lambda d: write_sample(d, "m", annotation([{"category": "target", "polygon": [1, 2, 3]}])),
     "m.json: shape 0: 'polygon' must be a flat list"),
    ("no_label", lambda d: write_sample(d, "m", annotation([{"points": rect(0, 0, 1, 1)}])),
     "m.json: shape 0: needs a string 'label'"),
    ("circle", lambda d: write_sample(d, "m", annotation([{"label": "target", "points": [[1, 1], [2, 2]],
                                                           "shape_type": "circle"}])),
     "m.json: shape 0: unsupported shape_type 'circle'"),
    ("corrupt_image", lambda d: ((d / "m.png").write_bytes(b"not a png"),
                                 (d / "m.json").write_text(json.dumps(annotation(GOOD_SHAPES)))),
     "m.png: unreadable image"),
    ("two_images",
     lambda d: (write_sample(d, "m", annotation(GOOD_SHAPES)), Image.new("RGB", (4, 4)).save(d / "m.jpg")),
     "m.json: several images share its id (m.jpg, m.png)"),
]


@pytest.mark.parametrize("name,write,fragment", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_sample_is_skipped_with_a_line_naming_the_file(tmp_path, name, write, fragment):
    write_sample(tmp_path, "good", annotation(GOOD_SHAPES))
    write(tmp_path)
    problems = []
    samples = list_samples(tmp_path, problems=problems)
    assert [s.id for s in samples] == ["good"]
    assert len(problems) == 1 and fragment in problems[0] and str(tmp_path) in problems[0]
    with pytest.warns(UserWarning, match="m\\."):
        assert [s.id for s in list_samples(tmp_path)] == ["good"]
    with pytest.raises(InputError) as raised:
        list_samples(tmp_path, strict=True)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "points,fragment",
    [
        ([[1, 1], [3, 3]], "polygon labelled 'target' has 2 point(s); at least 3 are needed"),
        (rect(20, 20, 30, 30), "polygon labelled 'target' lies entirely outside the 8x6 image"),
        ([[-10, 5], [5, -10], [-10, -10]], "lies entirely outside"),  # its bounding box overlaps the image
    ],
)
def test_bad_polygon_is_reported_and_left_out_but_the_sample_stays(tmp_path, points, fragment):
    shapes = [{"label": "target", "points": points}, {"label": "target", "points": rect(4, 4, 5, 5)}]
    write_sample(tmp_path, "p", annotation(shapes))
    problems = []
    [sample] = list_samples(tmp_path, problems=problems)
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'p.json'}: ") and fragment in problems[0]
    assert np.array_equal(load_label_map(sample), box(4, 4, 5, 5))
    with pytest.raises(InputError, match="p.json: .*" + fragment.split(" ")[-1]):
        list_samples(tmp_path, strict=True)


def test_cp1252_json_and_string_or_list_text(tmp_path):
    Image.new("RGB", (WIDTH, HEIGHT)).save(tmp_path / "c.png")
    text = json.dumps(annotation(GOOD_SHAPES, text="caf\u00e9 sign"), ensure_ascii=False)
    (tmp_path / "c.json").write_bytes(text.encode("cp1252"))
    assert read_annotation(tmp_path / "c.json").queries == ["caf\u00e9 sign"]


def test_missing_folder_and_bad_explanatory_file(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        list_samples(tmp_path / "nowhere")
    write_sample(tmp_path / "train", "a", annotation(GOOD_SHAPES))
    (tmp_path / "explanatory").mkdir()
    (tmp_path / "explanatory" / "train.json").write_text(json.dumps({"not": "a list"}))
    problems = []
    assert len(list_samples(tmp_path / "train", problems=problems)) == 1
    assert len(problems) == 1 and "train.json: explanatory JSON must be a list" in problems[0]
    with pytest.raises(InputError, match="explanatory JSON must be a list"):
        list_samples(tmp_path / "train", strict=True)


def test_label_map_of_a_json_path_needs_the_size(tmp_path):
    write_sample(tmp_path, "a", annotation(GOOD_SHAPES))
    with pytest.raises(InputError, match="a.json: the image height and width are needed"):
        load_label_map(tmp_path / "a.json")
