"""benchmarks/demo_model_families.py splits the demo's answers by the object they name and how far the grid cell they
name is from the target's; benchmarks/toy_llava_grounding.py scores the cells of stage 2's list turns."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "demo" / "toy_llava"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_benchmark(name: str = "demo_model_families"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _annotation(family, targets, points, width=160, height=80):
    objects = [{"point": list(p), "colour": colour, "shape": shape, "size": "medium"}
               for p, (colour, shape) in zip(points, [("red", "star"), ("blue", "heart")])]
    return {"family": family, "targets": targets, "width": width, "height": height, "objects": objects}


def test_answer_breakdown_and_family_scores(tmp_path):
    benchmark = _load_benchmark()
    # 160x80 image, 8x8 grid: a cell is 20 px wide and 10 px high, so pixel (65, 35) lies in cell (3, 3)
    annotations = {
        "a": _annotation("attribute", [0], [(65, 35), (5, 5)]),
        "b": _annotation("spatial", [1], [(65, 35), (159, 79)]),
        "c": _annotation("multi_target", [0, 1], [(65, 35), (5, 5)]),
        "d": _annotation("no_target", [], [(65, 35)]),
    }
    for name, annotation in annotations.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(annotation))
    records = [
        {"id": "a", "mode": "generate", "answer": "The red star at (3, 3) [SEG].", "iou": 0.9, "intersection": 9,
         "union": 10, "seg_count": 1, "has_target": True},
        {"id": "b", "mode": "generate", "answer": "The blue heart at (3, 3) [SEG].", "iou": 0.1, "intersection": 1,
         "union": 10, "seg_count": 1, "has_target": True},
        {"id": "b", "mode": "generate", "answer": "The blue heart at (7, 7) [SEG].", "iou": 0.7, "intersection": 7,
         "union": 10, "seg_count": 1, "has_target": True},
        {"id": "a", "mode": "generate", "answer": "The blue heart at (2, 4) [SEG].", "iou": 0.3, "intersection": 3,
         "union": 10, "seg_count": 1, "has_target": True},
        {"id": "a", "mode": "generate", "answer": "There is no star.", "iou": 0.0, "intersection": 0,
         "union": 10, "seg_count": 0, "has_target": True},
        {"id": "c", "mode": "generate", "answer": "At (3, 3) [SEG] and (0, 0) [SEG].", "iou": 0.5, "intersection": 5,
         "union": 10, "seg_count": 2, "has_target": True},
        {"id": "d", "mode": "generate", "answer": "There is no green circle.", "iou": 1.0, "intersection": 0,
         "union": 0, "seg_count": 0, "has_target": False},
        {"id": "a", "mode": "lisa", "answer": "[SEG].", "iou": 0.0, "intersection": 0, "union": 10, "seg_count": 1,
         "has_target": True},
    ]
    per_sample = tmp_path / "per_sample.jsonl"
    per_sample.write_text("".join(json.dumps(r) + "\n" for r in records))

    kinds = benchmark.answer_breakdown(per_sample, tmp_path)
    assert sum(kind["n"] for kind in kinds.values()) == 5  # single-target, generate mode
    assert kinds["target, its cell"]["n"] == 2 and abs(kinds["target, its cell"]["giou"] - 0.8) < 1e-9
    assert kinds["target, cell further"]["n"] == 1 and kinds["target, cell further"]["giou"] == 0.1  # (3, 3) vs (7, 7)
    assert kinds["other object, one off"]["n"] == 1 and kinds["other object, one off"]["giou"] == 0.3  # (2, 4)
    assert kinds["denied (no [SEG])"]["n"] == 1 and kinds["denied (no [SEG])"]["share"] == 0.2
    assert kinds["target, cell one off"]["n"] == kinds["other object, target's cell"]["n"] == 0

    scores = benchmark.family_scores(per_sample, tmp_path)
    assert scores["all with a target"]["n"] == 6  # the lisa-mode record and the no-target one are left out
    assert abs(scores["all with a target"]["ciou"] - 25 / 60) < 1e-9
    assert scores["no_target"]["no_seg"] == 1.0 and scores["spatial"]["n"] == 2

    # the right answers' masks (the red star of "a", 0.9; the blue heart of "b", 0.7) by the target's shape, size
    # and visible share
    annotations["a"]["objects"][0].update(size="small", visible_fraction=0.5)
    (tmp_path / "a.json").write_text(json.dumps(annotations["a"]))
    benchmark._read_annotation.cache_clear()
    masks = benchmark.right_answer_masks(per_sample, tmp_path)
    assert {group: (m["n"], m["giou"]) for group, m in masks.items()} == {
        "shape heart": (1, 0.7), "shape star": (1, 0.9), "size medium": (1, 0.7), "size small": (1, 0.9),
        "visible <90 %": (1, 0.9), "visible >=90 %": (1, 0.7)}

    # rows with nothing to score print "-", not "nan": an empty answer kind, a cIoU over no pixels at all
    assert benchmark._figure(kinds["target, cell one off"]["giou"]) == "-"
    assert benchmark._figure(scores["no_target"]["ciou"], 8) == "       -"
    assert benchmark._figure(0.8125, 8) == "   0.812"


def test_query_kind_rates_split_single_target_answers_by_query_kind(tmp_path):
    benchmark = _load_benchmark()
    # pixel (65, 35) lies in cell (3, 3) of the 160x80 image's 8x8 grid; the blue heart's point is elsewhere
    for name, kind in (("a", "only_of_kind"), ("b", "largest")):
        annotation = _annotation("superlative", [0], [(65, 35), (5, 5)]) | {"kind": kind}
        (tmp_path / f"{name}.json").write_text(json.dumps(annotation))
    (tmp_path / "c.json").write_text(json.dumps(_annotation("multi_target", [0, 1], [(65, 35), (5, 5)])))
    answers = [("a", "The red star at (3, 3) [SEG].", 0.9), ("a", "The blue heart at (0, 0) [SEG].", 0.0),
               ("a", "The blue heart at (3, 3) [SEG].", 0.6), ("a", "There is none.", 0.0),
               ("b", "The red star at (3, 3) [SEG].", 0.8), ("c", "At (3, 3) [SEG] and (0, 0) [SEG].", 0.5)]
    per_sample = tmp_path / "per_sample.jsonl"
    per_sample.write_text("".join(json.dumps({"id": i, "mode": "generate", "answer": a, "iou": iou,
                                              "seg_count": a.count("[SEG]")}) + "\n" for i, a, iou in answers))

    rates = benchmark.query_kind_rates(per_sample, tmp_path)
    assert set(rates) == {("superlative", "only_of_kind"), ("superlative", "largest")}  # several targets left out
    only = rates[("superlative", "only_of_kind")]
    assert only["n"] == 4 and only["right"] == 0.25 and only["other_object"] == 0.5
    assert abs(only["giou"] - 1.5 / 4) < 1e-9
    assert rates[("superlative", "largest")] == {"n": 1, "right": 1.0, "other_object": 0.0, "giou": 0.8}


def test_multi_target_breakdown(tmp_path):
    benchmark = _load_benchmark()
    # targets 0 and 1 in cells (3, 3) and (0, 0); object 2 (not a target) in cell (7, 7)
    annotation = _annotation("multi_target", [0, 1], [(65, 35), (5, 5)])
    annotation["objects"].append({"point": [159, 79], "colour": "red", "shape": "heart"})
    (tmp_path / "m.json").write_text(json.dumps(annotation))
    (tmp_path / "s.json").write_text(json.dumps(_annotation("attribute", [0], [(65, 35), (5, 5)])))
    answers = [("At (3, 3) [SEG] and (0, 0) [SEG].", 2, 0.8),     # both cells, nothing else
               ("At (3, 3) [SEG].", 1, 0.4),                        # one of two
               ("At (3, 3) [SEG], (0, 0) [SEG] and (7, 7) [SEG].", 3, 0.5),  # one too many
               ("There are none.", 0, 0.0)]
    records = [{"id": "m", "mode": "generate", "answer": a, "seg_count": n, "iou": iou, "intersection": 0,
                "union": 1, "has_target": True} for a, n, iou in answers]
    records.append({"id": "s", "mode": "generate", "answer": "At (3, 3) [SEG].", "seg_count": 1, "iou": 0.9,
                    "intersection": 9, "union": 10, "has_target": True})  # single target: not counted
    per_sample = tmp_path / "per_sample.jsonl"
    per_sample.write_text("".join(json.dumps(r) + "\n" for r in records))

    multi = benchmark.multi_target_breakdown(per_sample, tmp_path)
    assert multi["n"] == 4
    assert [multi["kinds"][k]["n"] for k in benchmark.MULTI_KINDS] == [1, 1, 1, 1]
    assert multi["kinds"]["fewer [SEG] than targets"]["giou"] == 0.4
    assert multi["target_recall"] == 5 / 8  # 2 + 1 + 2 + 0 of 4 x 2 targets' cells
    assert multi["cell_precision"] == 5 / 6  # of the 2 + 1 + 3 cells named, (7, 7) is no target's
    assert multi["all_cells"] == 0.25 and multi["all_cells_giou"] == 0.8


def test_list_grounding_counts_every_coordinate_of_a_list_turn(monkeypatch):
    """Scored with a stand-in for the model's teacher-forced predictions: right where it says, wrong where it
    shifts one digit of each place."""
    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.data.toy_world.turns import list_queries
    from reasonseg.training.collate import IGNORE_INDEX

    grounding = _load_benchmark("toy_llava_grounding")
    tokenizer = AutoTokenizer.from_pretrained(ARTIFACT)
    config = grounding.trained_config(ARTIFACT, None)
    digits = grounding.digit_tokens(tokenizer)

    def predict_with(shift_first_digit: bool):
        def teacher_forced(model, tokenizer, config, pixels, turn, state_layer=None):
            ids, labels = grounding.encode_conversation(tokenizer, config, [turn])
            expected = labels[1:]
            predicted = [t if t != IGNORE_INDEX else 0 for t in expected]
            places = [k for k, t in enumerate(expected) if t != IGNORE_INDEX and t in digits]
            if shift_first_digit:
                for k in places[::2]:  # each place's column
                    token = tokenizer.convert_ids_to_tokens(expected[k])  # "3" or "Ġ3"
                    predicted[k] = tokenizer.convert_tokens_to_ids(token[:-1] + str((digits[expected[k]] + 1) % 8))
            return predicted, expected, None
        return teacher_forced

    scenes = 6
    turns = sum(len(list_queries(generate_sample(split_seed("val", i)))) for i in range(scenes))
    processor = lambda images, return_tensors: {"pixel_values": None}  # noqa: E731
    monkeypatch.setattr(grounding, "teacher_forced", predict_with(False))
    right = grounding.list_grounding(None, tokenizer, processor, config, scenes)
    assert right == {"token_accuracy": 1.0, "all_right": 1.0, "turns": turns} and turns >= 4
    monkeypatch.setattr(grounding, "teacher_forced", predict_with(True))
    half = grounding.list_grounding(None, tokenizer, processor, config, scenes)
    assert half["token_accuracy"] == 0.5 and half["all_right"] == 0.0


def test_families_benchmark_names_a_wrong_folder(tmp_path, monkeypatch, capsys):
    benchmark = _load_benchmark()
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "per_sample.jsonl").write_text("")
    for argv, message in [([str(tmp_path / "nowhere"), str(tmp_path)], "has no per_sample.jsonl"),
                          ([str(tmp_path / "eval"), str(tmp_path / "eval")], "has no scene JSONs")]:
        monkeypatch.setattr("sys.argv", ["demo_model_families.py", *argv])
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main()
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_toy_sam_masks_benchmark_names_a_folder_that_is_no_toy_sam(tmp_path, monkeypatch, capsys):
    benchmark = _load_benchmark("toy_sam_masks")
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text('{"model_type": "llava"}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "sa')
    for folder in (tmp_path / "nowhere", tmp_path / "llava", tmp_path / "broken"):
        monkeypatch.setattr("sys.argv", ["toy_sam_masks.py", "artifacts/demo/toy_sam", str(folder)])
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main()
        assert exit_info.value.code == 2
        assert "is not a saved toy SAM" in capsys.readouterr().err


def test_toy_sam_masks_groups_every_object_and_bounds_the_low_res_mask():
    import numpy as np

    from reasonseg.training.sam_pretrain import build_sam, evaluate_sam, load_sam_pretrain_config, prompted_object_ious

    benchmark = _load_benchmark("toy_sam_masks")
    config = load_sam_pretrain_config("configs/demo/toy_sam.yaml", ["image_size=64", "encoder_width=32",
                                                                     "embed_dim=32", "decoder_mlp_dim=64"])
    model = build_sam(config)
    table = benchmark.mask_ious_by_group(model, 3)
    assert model.training  # the scoring leaves the model in the mode it found it
    reading = prompted_object_ious(model, config.image_size, 3)
    next(reading)
    assert not model.training
    reading.close()  # a caller that stops early gets its mode back too
    assert model.training
    for kind, expected in evaluate_sam(model, config, 3).items():
        every = table[(kind.removesuffix("_miou"), "all", "all")]
        assert np.mean(every) == pytest.approx(expected)
        for group in benchmark.GROUPS:  # each group splits the same objects
            parts = [values for (k, g, _), values in table.items() if k == kind.removesuffix("_miou") and g == group]
            assert sum(len(values) for values in parts) == len(every)
            assert sum(sum(values) for values in parts) == pytest.approx(sum(every))
    coarse, fine = (benchmark.low_res_ceiling(64, size, 3) for size in (8, 64))
    assert len(coarse) == len(every) and 0 < np.mean(coarse) < np.mean(fine) <= 1
    assert np.mean(fine) > 0.85  # a 64x64 grid on a 64-px SAM input: only the resize loses (measured 0.883)


def test_referring_probe_keeps_only_the_asked_kinds_and_scores_each(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe_module = _load_benchmark("demo_referring_probe")
    # 160x80 image, 8x8 grid: the red star's point (65, 35) lies in cell (3, 3)
    files = {"a": ("closest", "the red star", "It is the red star at (3, 3)."),
             "b": ("closest", "the red star", "It is the blue heart at (0, 0)."),
             "c": ("only_of_kind", "the red star", "It is the red star at (4, 3)."),
             "d": ("largest", "the red star", "It is the red star at (3, 3).")}
    answers = {}
    for name, (kind, text, answer) in files.items():
        annotation = {**_annotation("superlative", [0], [(65, 35), (5, 5)]), "kind": kind, "text": [f"{text} {name}"],
                      "is_sentence": False}
        (tmp_path / f"{name}.json").write_text(json.dumps(annotation))
        Image.new("RGB", (160, 80)).save(tmp_path / f"{name}.png")
        answers[f"Which shape is {text} {name}?"] = answer

    class ScriptedSegmenter:
        def predict(self, image, question, max_new_tokens):
            return type("Prediction", (), {"text": answers[question]})()

    scores = probe_module.probe(ScriptedSegmenter(), tmp_path, kinds={"closest", "only_of_kind"})
    assert scores["queries"] == 3
    assert scores["names target"] == pytest.approx(2 / 3) and scores["both"] == pytest.approx(1 / 3)
    assert scores["cell within one"] == pytest.approx(2 / 3)
    assert scores["by_kind"] == {"closest": (2, 0.5), "only_of_kind": (1, 0.0)}
    everything = probe_module.probe(ScriptedSegmenter(), tmp_path)
    assert everything["queries"] == 4 and everything["by_kind"]["largest"] == (1, 1.0)


def test_referring_probe_names_an_unknown_kind(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe_module = _load_benchmark("demo_referring_probe")
    monkeypatch.setattr("sys.argv", ["demo_referring_probe.py", "some/model", str(tmp_path), "--kinds", "nearest"])
    with pytest.raises(SystemExit):
        probe_module.main()
    assert "--kinds 'nearest': use one-target kinds of" in capsys.readouterr().err


def test_referring_probe_refuses_a_folder_that_is_no_split_and_a_model_that_is_not_built(tmp_path, monkeypatch,
                                                                                          capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe_module = _load_benchmark("demo_referring_probe")
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "qa.jsonl").write_text("")
    # a stage-2 LLaVA: the probe asks a built (reasonseg) model
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text('{"model_type": "llava", "architectures": '
                                                    '["LlavaForConditionalGeneration"]}')
    for model, split, message in ((tmp_path / "llava", tmp_path / "nowhere", "is not a split folder"),
                                  (tmp_path / "llava", tmp_path / "split", "reasonseg build --vlm")):
        monkeypatch.setattr("sys.argv", ["demo_referring_probe.py", str(model), str(split)])
        with pytest.raises(SystemExit) as exit_info:
            probe_module.main()
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_fixed_query_rule_starts_with_the_acceptance_tests_queries_and_skips_scenes_without_one():
    import numpy as np

    from reasonseg.inference.segmenter import Prediction
    from tests.test_demo_model import FIXED_QUERIES, MIN_IOU

    fixed = _load_benchmark("demo_fixed_queries")
    assert fixed.MIN_IOU == MIN_IOU
    queries = fixed.fixed_queries(20)
    assert [(q.index, q.family) for q in queries[:5]] == FIXED_QUERIES
    indexes = [q.index for q in queries]
    assert len(queries) == 20 and indexes == sorted(set(indexes)) and indexes[-1] > 19  # some scenes have none
    assert all(q.family == fixed.FAMILIES_IN_TURN[q.index % 4] and q.truth.any() for q in queries)
    truth = queries[0].truth
    answered = Prediction(text="x [SEG]", masks=[truth.copy()])
    assert fixed.first_mask_iou(answered.masks, truth) == pytest.approx(1.0, abs=1e-6)  # LISA's epsilon in the union
    assert fixed.first_mask_iou([], truth) == 0.0


def test_mask_region_benchmark_scores_each_rule_from_the_same_logits():
    from reasonseg.inference.segmenter import Prediction

    benchmark = _load_benchmark("demo_mask_regions")
    truth = np.zeros((6, 8), dtype=bool)
    truth[1:4, 1:4] = True  # 9 px
    logits = np.full((6, 8), -1.0, dtype=np.float32)
    logits[1:4, 1:4] = 2.0  # the target ...
    logits[0, 5:8] = logits[5, 5:8] = 1.0  # ... and two 3-px patches elsewhere
    predictions = [Prediction("x", masks=[logits > 0], mask_logits=[logits]), Prediction("no mask")]
    truths = [truth, truth]
    giou, ciou, passed = benchmark.score(predictions, truths, "all")
    assert (giou, ciou, passed) == (pytest.approx((9 / 15 + 0) / 2, abs=1e-5), pytest.approx(9 / 24), 0.0)
    giou, ciou, passed = benchmark.score(predictions, truths, "largest")
    assert (giou, ciou, passed) == (pytest.approx(0.5, abs=1e-5), pytest.approx(9 / 18), 0.5)
    queries = list(benchmark.validation_queries(2))
    assert queries and all(mask.any() and mask.shape == image.shape[:2] for image, _, mask in queries)


def test_boundary_probe_sorts_cells_and_scores_a_linear_read_out():
    probe = _load_benchmark("toy_sam_boundary_probe")
    labels = np.full((16, 24), -1)
    labels[:, :12] = 0  # a red shape ...
    labels[:, 12:20] = 1  # ... touching a red one (cells of 8: the boundary runs through the second column of cells)
    labels[8:, 12:20] = 2  # ... and, below, a blue one
    kinds = probe.cell_kinds(labels, ["red", "red", "blue"], cell=8)
    assert kinds == [(0, 0, probe.INSIDE), (0, 1, probe.SAME_COLOUR), (1, 0, probe.INSIDE),
                     (1, 1, probe.OTHER_COLOUR)]  # column 2 holds background: left out
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    separable = x[:, 0] > 0.5  # unbalanced, as boundary cells are
    assert probe.balanced_probe(x[:300], separable[:300], x[300:], separable[300:]) > 0.95
    noise = rng.random(400) < 0.2
    assert abs(probe.balanced_probe(x[:300], noise[:300], x[300:], noise[300:]) - 0.5) < 0.15
