"""The shapes world: deterministic, disjoint splits, every family, correct targets, exact polygons, CLI output."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasonseg.cli.main import main
from reasonseg.data.toy_world import (
    CORNERS,
    FAMILIES,
    MIXES,
    SHAPES,
    SIZES,
    all_queries,
    generate_sample,
    generate_scene,
    mask_iou,
    object_polygon,
    polygon_to_mask,
    split_of_seed,
    split_seed,
    split_seeds,
    write_example,
    write_reasonseg_split,
)
from reasonseg.data.toy_world.queries import ONE_TARGET_KINDS, focus_queries
from reasonseg.data.toy_world.vocab import MIN_VISIBLE_FRACTION
from reasonseg.data.toy_world.writer import example_sample
from reasonseg.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(300)


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(seed) for seed in SEEDS]


def test_same_seed_same_bytes_and_different_seeds_differ():
    a, b = generate_sample(1234), generate_sample(1234)
    assert a.image.tobytes() == b.image.tobytes()
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    assert generate_scene(1234).image.tobytes() == a.image.tobytes()
    assert generate_sample(1235).image.tobytes() != a.image.tobytes()


def test_family_filter_keeps_the_other_queries_unchanged():
    for seed in range(20):
        full = generate_sample(seed).queries
        for family in ("spatial", "no_target", "explanatory"):
            assert generate_sample(seed, families=[family]).queries == [q for q in full if q.family == family]
    with pytest.raises(InputError, match="unknown query families"):
        generate_sample(0, families=["colour"])
    with pytest.raises(InputError):
        generate_sample(-1)


def test_splits_never_share_seeds():
    train, val, test = (set(split_seeds(s, 5000)) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert split_seed("train", 7) == 7 and split_seed("val", 0) == 10_000_000 and split_seed("test", 3) == 20_000_003
    assert split_of_seed(10_000_005) == "val" and split_of_seed(9_999_999) == "train"
    assert list(split_seeds("val", 3, start=10)) == [10_000_010, 10_000_011, 10_000_012]
    for bad in (lambda: split_seed("dev", 0), lambda: split_seed("val", 10_000_000), lambda: split_seeds("val", -1)):
        with pytest.raises(InputError):
            bad()


def test_scene_rules(samples):
    for s in samples[:120]:
        h, w = s.image.shape[:2]
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 3 and 128 <= h <= 640 and 128 <= w <= 640
        assert 1 <= len(s.objects) <= 6
        covered = np.zeros((h, w), dtype=int)
        for o in s.objects:
            mask = o.mask
            covered += mask
            assert o.shape in SHAPES and o.size in SIZES and mask.sum() == o.area
            assert o.area >= MIN_VISIBLE_FRACTION * o.full_area
            assert mask[o.point[1], o.point[0]], "the point prompt lies in the visible mask"
            ys, xs = np.nonzero(mask)
            assert o.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert np.array_equal(s.labels == o.index, mask)
            assert np.allclose(o.centroid, (xs.mean(), ys.mean()))
        assert covered.max() <= 1, "visible masks do not overlap"


def test_every_family_and_answer_conventions(samples):
    families, kinds = Counter(), Counter()
    for s in samples:
        for q in s.queries:
            families[q.family] += 1
            kinds[q.kind] += 1
            assert q.answer.count("[SEG]") == len(q.targets)
            # each [SEG] follows its target's full description and the 8x8 grid cell of its innermost point, in order
            named = [(d, int(c), int(r)) for d, c, r in re.findall(r"[Tt]he (\w+ \w+ \w+) at \((\d), (\d)\) \[SEG\]", q.answer)]
            cells = [(s.objects[t].describe(with_size=True), s.objects[t].point[0] * 8 // s.width,
                      s.objects[t].point[1] * 8 // s.height) for t in q.targets]
            assert named == cells, (q.answer, cells)
            assert len(set(q.targets)) == len(q.targets) and all(0 <= t < len(s.objects) for t in q.targets)
            assert q.text and q.is_sentence == (q.text[-1] in ".?")
            if q.family == "no_target":
                assert not q.targets and "[SEG]" not in q.answer
            elif q.family == "multi_target":
                assert len(q.targets) >= 2
                xs = [s.objects[t].centroid[0] for t in q.targets]
                assert xs == sorted(xs), "several targets are ordered left to right"
            else:
                assert len(q.targets) == 1
            if q.family == "explanatory":
                assert q.reason and q.answer.endswith(q.reason) and q.is_sentence
        assert s.caption and any(p.kind == "count" for p in s.qa)
    assert set(families) == set(FAMILIES)
    assert min(families.values()) >= 100
    for kind in ("leftmost", "left_of", "closest", "largest", "smallest", "only_of_colour", "most_corners",
                 "could_roll", "colour_mix", "shape_clue", "all_of_shape", "all_of_colour"):
        assert kinds[kind] > 0, kind


def test_targets_are_right(samples):
    checked = Counter()
    for s in samples:
        objs = s.objects
        cx = [o.centroid[0] for o in objs]
        for q in all_queries(s.scene, s.seed):
            t = q.targets[0] if q.targets else None
            if q.text == "the leftmost shape":
                assert cx[t] == min(cx) and sorted(cx)[1] > cx[t]
            elif q.text == "the rightmost shape":
                assert cx[t] == max(cx)
            elif q.text == "the topmost shape":
                assert objs[t].centroid[1] == min(o.centroid[1] for o in objs)
            elif q.text == "the largest shape":
                assert objs[t].area >= 1.5 * max(o.area for o in objs if o is not objs[t])
            elif q.text == "the smallest shape":
                assert 1.5 * objs[t].area <= min(o.area for o in objs if o is not objs[t])
            elif q.kind in ("could_roll", "no_corners") and q.family == "reasoning":
                assert objs[t].shape == "circle" and sum(o.shape == "circle" for o in objs) == 1
            elif q.kind == "most_corners":
                assert all(CORNERS[objs[t].shape] > CORNERS[o.shape] for o in objs if o is not objs[t])
            elif q.kind == "colour_mix" and q.family == "reasoning":
                a, b = MIXES[objs[t].colour]
                assert f"mixing {a} and {b}" in q.text or f"mix of {a} and {b}" in q.text
            elif q.text == "the shape you would draw on a valentine card" and q.targets:
                assert objs[t].shape == "heart"
            elif q.kind == "left_of":
                ref_text = q.text.split(" left of ", 1)[1]
                refs = [o for o in objs if ref_text in (f"the {o.colour} {o.shape}", f"the {o.shape}",
                                                        f"the {o.colour} shape", f"the {o.size} {o.shape}",
                                                        f"the {o.size} {o.colour} {o.shape}")]
                assert len(refs) >= 1 and all(cx[t] < ref.centroid[0] for ref in refs)
            elif q.kind == "colour_shape" and q.family == "attribute":
                assert q.text == f"the {objs[t].colour} {objs[t].shape}"
                assert sum((o.colour, o.shape) == (objs[t].colour, objs[t].shape) for o in objs) == 1
            elif q.family == "no_target" and q.kind == "colour_shape":
                colour, shape = q.text.split()[1:3]
                assert not any((o.colour, o.shape) == (colour, shape) for o in objs)
            else:
                continue
            checked[q.kind] += 1
    assert len(checked) >= 8 and sum(checked.values()) > 300


def test_hand_made_scene():
    sample = example_sample()  # red circle (left), blue square (middle), yellow triangle (right, lower, smallest)
    found = {(q.family, q.text): q.targets for q in all_queries(sample.scene)}
    assert found[("spatial", "the leftmost shape")] == (0,)
    assert found[("spatial", "the rightmost shape")] == (2,)
    assert found[("spatial", "the shape to the left of the blue square")] == (0,)
    assert found[("superlative", "the smallest shape")] == (2,)
    assert found[("reasoning", "the shape that could roll")] == (0,)
    assert found[("reasoning", "the shape with the most corners")] == (1,)
    assert found[("multi_target", "all the shapes")] == (0, 1, 2)
    assert ("spatial", "the topmost shape") not in found, "circle and square are too close in height to say"
    assert ("superlative", "the largest shape") not in found, "circle and square are too close in area to say"


def test_polygons_rerasterise_with_high_iou(samples):
    worst = 1.0
    for s in samples[:150]:
        for o in s.objects:
            worst = min(worst, mask_iou(polygon_to_mask(object_polygon(o), s.height, s.width), o.mask))
    assert worst >= 0.97


def test_cli_writes_the_promised_files(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["world", "generate", "--out", str(out), "--split", "val", "--num", "4", "--start", "2"]) == 0
    printed = capsys.readouterr().out
    assert all(family in printed for family in FAMILIES)
    split_dir = out / "val"
    jsons = sorted(split_dir.glob("val_*.json"))
    expected = sum(len(generate_sample(seed).queries) for seed in split_seeds("val", 4, start=2))
    assert len(jsons) == expected and all(p.with_suffix(".png").is_file() for p in jsons)
    for path in jsons:
        record = json.loads(path.read_text())
        _, seed, q_index = path.stem.split("_")
        sample = generate_sample(int(seed))
        query = sample.queries[int(q_index)]
        assert record["text"][0] == query.text and record["is_sentence"] == query.is_sentence
        assert record["answer"] == query.answer and record["targets"] == list(query.targets)
        assert len(record["shapes"]) == len(query.targets)
        image = np.asarray(Image.open(path.with_suffix(".png")))
        assert np.array_equal(image, sample.image)
        for shape, target in zip(record["shapes"], query.targets):
            assert shape["label"] == "target" and shape["shape_type"] == "polygon"
            mask = polygon_to_mask(shape["points"], sample.height, sample.width)
            assert mask_iou(mask, sample.objects[target].mask) >= 0.97
    qa = [json.loads(line) for line in (split_dir / "qa.jsonl").read_text().splitlines()]
    instances = [json.loads(line) for line in (split_dir / "instances.jsonl").read_text().splitlines()]
    assert qa and all((split_dir / r["image"]).is_file() and r["question"] and r["answer"] for r in qa)
    assert len(instances) == sum(len(generate_sample(seed).objects) for seed in split_seeds("val", 4, start=2))
    assert all(len(r["point"]) == 2 and len(r["box"]) == 4 and len(r["polygon"]) >= 3 for r in instances)

    before = {p.name: p.read_bytes() for p in split_dir.iterdir()}
    assert main(["world", "generate", "--out", str(out), "--split", "val", "--num", "4", "--start", "2"]) == 0
    assert {p.name: p.read_bytes() for p in split_dir.iterdir()} == before, "rewriting gives identical bytes"

    assert main(["world", "generate", "--out", str(out), "--families", "spatial,bogus"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "bogus" in err[0]
    assert main(["world", "generate", "--out", str(out), "--split", "dev"]) == 1
    assert main(["world", "generate", "--out", str(out), "--num", "-3"]) == 1


def test_writer_family_filter(tmp_path):
    summary = write_reasonseg_split(tmp_path, "test", 6, families=["multi_target"])
    assert set(summary.families) == {"multi_target"} and summary.scenes + summary.skipped_scenes == 6
    for path in (tmp_path / "test").glob("*.json"):
        record = json.loads(path.read_text())
        assert record["family"] == "multi_target" and len(record["shapes"]) >= 2


def test_bundled_example_is_current(tmp_path):
    write_example(tmp_path)
    bundled = REPO / "examples"
    fresh, kept = (np.asarray(Image.open(d / "shapes.png")) for d in (tmp_path, bundled))
    assert np.array_equal(fresh, kept)
    assert json.loads((tmp_path / "shapes.json").read_text()) == json.loads((bundled / "shapes.json").read_text())
    record = json.loads((bundled / "shapes.json").read_text())
    assert record["text"] == ["Which shape could roll away? Please output segmentation mask."]
    assert record["objects"][record["targets"][0]]["shape"] == "circle"
    assert sum(p.stat().st_size for p in bundled.iterdir()) < 100_000


def test_generation_is_fast():
    generate_sample(0)
    began = time.perf_counter()
    for seed in range(100, 150):
        generate_sample(seed)
    assert (time.perf_counter() - began) / 50 < 0.05  # a few ms in practice; loose for slow CI machines


def test_focus_queries_ask_every_rare_kind_a_scene_offers(samples):
    rare = ("only_of_kind", "only_of_colour", "odd_shape", "closest", "above")
    asked = Counter()
    for s in samples[:150]:
        offered = {(q.family, q.kind, q.targets) for q in all_queries(s.scene, s.seed)}
        focus = focus_queries(s.scene, s.seed, rare)
        assert focus == focus_queries(s.scene, s.seed, list(reversed(rare)))  # seeded, order of kinds irrelevant
        assert len({q.kind for q in focus}) == len(focus)  # one query per kind
        assert {q.kind for q in focus} == {kind for _, kind, targets in offered if kind in rare and len(targets) == 1}
        for q in focus:
            assert (q.family, q.kind, q.targets) in offered and len(q.targets) == 1
            assert q.kind in ONE_TARGET_KINDS[q.family]
            assert q.answer.count("[SEG]") == 1
            asked[q.kind] += 1
    # make_queries asks each of these in 1-2 % of scenes' family queries; here, in every scene offering one
    assert all(asked[kind] >= 10 for kind in rare), asked
    assert focus_queries(samples[0].scene, 0, "closest") == focus_queries(samples[0].scene, 0, ["closest"])
    with pytest.raises(InputError, match="unknown query kinds 'nearest'.*known one-target kinds: above"):
        focus_queries(samples[0].scene, 0, ["nearest"])


def test_one_target_kinds_list_every_kind_the_families_ask(samples):
    kinds = {(q.family, q.kind) for s in samples for q in all_queries(s.scene, s.seed)
             if len(q.targets) == 1 and q.family in ONE_TARGET_KINDS}
    assert kinds == {(family, kind) for family, names in ONE_TARGET_KINDS.items() for kind in names}
