"""Per-query-family scores of a `reasonseg eval` run on the shapes world (the demo model card's table).

    reasonseg world generate --out runs/demo/world --split test --num 100
    reasonseg eval --data reasonseg:runs/demo/world --split test --mode generate --all-queries --out runs/demo/eval
    python benchmarks/demo_model_families.py runs/demo/eval runs/demo/world/test

Prints gIoU (mean IoU), cIoU (summed intersection over summed union) and the share of answers with no [SEG] per
family, read from the run's per_sample.jsonl and the family each sample's JSON names. The overall row counts only
queries with a target (a no-target query is scored by its no-[SEG] share).

Then it splits the single-target answers by what they say ("the small red star at (3, 6) [SEG]"): the target's
colour and shape or another object, and the one grid cell named against the cell of the target's innermost point
(the same, one off, further), or no [SEG] at all; the mean IoU of each part says how much of the gap is the
language model naming the wrong object or place and how much is the mask decoder outlining the right place badly.
Then the several-target answers: their [SEG] count against the number of targets, and how many of the targets'
cells they name. Last, the masks of the right answers (the target and its cell) by the target's shape, size word and
visibility: where the mask decoder, not the language model, loses. And the query kinds (e.g. superlative/only_of_kind,
"the only shape of its kind") whose single-target answers name the target and its cell least often: which questions
the language model's grounding fails.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from reasonseg.data.toy_world.queries import point_cell

ANSWER_CELL = re.compile(r"\((\d+), (\d+)\)")  # "at (3, 6)" in a grounded answer
MIN_KIND_ANSWERS = 5  # fewer answers of a query kind say little about it
WEAKEST_KINDS_SHOWN = 10


def _generate_records(per_sample: Path):
    for line in per_sample.read_text().splitlines():
        record = json.loads(line)
        if record.get("mode") == "generate":
            yield record


def _annotation(data_dir: Path, record: dict) -> dict:
    return _read_annotation(data_dir, Path(record["id"]).stem)


@lru_cache(maxsize=None)  # every phrasing of a scene, in both tables, reads the same file
def _read_annotation(data_dir: Path, stem: str) -> dict:
    return json.loads((data_dir / f"{stem}.json").read_text())


def family_scores(per_sample: Path, data_dir: Path) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in _generate_records(per_sample):
        family = _annotation(data_dir, record)["family"]
        groups[family].append(record)
        if record["has_target"]:
            groups["all with a target"].append(record)
    scores = {}
    for family, records in groups.items():
        union = sum(r["union"] for r in records)
        scores[family] = {
            "n": len(records),
            "giou": sum(r["iou"] for r in records) / len(records),
            "ciou": sum(r["intersection"] for r in records) / union if union else float("nan"),
            "no_seg": sum(r["seg_count"] == 0 for r in records) / len(records),
        }
    return scores


ANSWER_KINDS = ("target, its cell", "target, cell one off", "target, cell further",
                "other object, target's cell", "other object, one off", "other object, further",
                "denied (no [SEG])", "not one cell")


def read_grounding(answer: str, annotation: dict) -> tuple[bool, list[int]]:
    """For a single-target query: whether the answer's words give the target's colour and shape, and for each
    "(column, row)" it names, how many cells that is from the target's cell (the cell of its innermost point;
    Chebyshev distance, 0 = the target's own cell)."""
    target = annotation["objects"][annotation["targets"][0]]
    column, row = point_cell(target["point"], annotation["width"], annotation["height"])
    offsets = [max(abs(int(c) - column), abs(int(r) - row)) for c, r in ANSWER_CELL.findall(answer)]
    return target["colour"] in answer and target["shape"] in answer, offsets


def answer_kind(record: dict, annotation: dict) -> str:
    """Which of ``ANSWER_KINDS`` a single-target answer is (:func:`read_grounding` of its one cell)."""
    if record["seg_count"] == 0:
        return "denied (no [SEG])"
    named, offsets = read_grounding(record["answer"], annotation)
    if len(offsets) != 1:
        return "not one cell"
    return ANSWER_KINDS[(0 if named else 3) + min(offsets[0], 2)]


def answer_breakdown(per_sample: Path, data_dir: Path) -> dict[str, dict[str, float]]:
    """``{kind: {"n", "share", "giou"}}`` over the single-target answers: what the language model said (object and
    place) against the masks it got, i.e. how much of the gap is naming the wrong object or place and how much is
    the mask decoder outlining the right place badly."""
    ious: dict[str, list[float]] = {kind: [] for kind in ANSWER_KINDS}
    for record in _generate_records(per_sample):
        annotation = _annotation(data_dir, record)
        if len(annotation["targets"]) == 1:
            ious[answer_kind(record, annotation)].append(record["iou"])
    return _kind_table(ious)


def _kind_table(ious: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """``{kind: {"n", "share", "giou"}}`` from the IoUs of each kind of answer."""
    total = sum(len(v) for v in ious.values())
    return {kind: {"n": len(v), "share": len(v) / max(total, 1), "giou": sum(v) / len(v) if v else float("nan")}
            for kind, v in ious.items()}


MULTI_KINDS = ("as many [SEG] as targets", "fewer [SEG] than targets", "more [SEG] than targets", "no [SEG]")


def multi_target_breakdown(per_sample: Path, data_dir: Path) -> dict:
    """For the queries with several targets (one [SEG] per object): how the answers' [SEG] count compares with the
    number of targets (``{kind: {"n", "share", "giou"}}`` over ``MULTI_KINDS``), and over all their named cells
    "(column, row)" the share of targets whose cell is named (``target_recall``), the share of named cells that are
    some target's cell (``cell_precision``) and the share of answers naming exactly every target's cell
    (``all_cells``, with its mean IoU ``all_cells_giou``)."""
    ious: dict[str, list[float]] = {kind: [] for kind in MULTI_KINDS}
    targets_total = cells_total = matched = 0  # a named cell that is a target's cell matches that target
    exact: list[float] = []
    for record in _generate_records(per_sample):
        annotation = _annotation(data_dir, record)
        targets = annotation["targets"]
        if len(targets) < 2:
            continue
        count = record["seg_count"]
        kind = 3 if count == 0 else 0 if count == len(targets) else 1 if count < len(targets) else 2
        ious[MULTI_KINDS[kind]].append(record["iou"])
        target_cells = {point_cell(annotation["objects"][t]["point"], annotation["width"], annotation["height"])
                        for t in targets}
        named = {(int(c), int(r)) for c, r in ANSWER_CELL.findall(record["answer"])}
        targets_total += len(target_cells)
        cells_total += len(named)
        matched += len(target_cells & named)
        if named == target_cells:
            exact.append(record["iou"])
    total = sum(len(v) for v in ious.values())
    return {"kinds": _kind_table(ious), "n": total,
            "target_recall": matched / max(targets_total, 1),
            "cell_precision": matched / max(cells_total, 1),
            "all_cells": len(exact) / max(total, 1),
            "all_cells_giou": sum(exact) / len(exact) if exact else float("nan")}


def right_answer_masks(per_sample: Path, data_dir: Path) -> dict[str, dict[str, float]]:
    """``{"shape <s>" / "size <w>" / "visible <90 %" / "visible >=90 %": {"n", "giou"}}``: the mean IoU of the
    single-target answers that name the target and its cell, by the target's shape, size word and visible share."""
    ious: dict[str, list[float]] = defaultdict(list)
    for record in _generate_records(per_sample):
        annotation = _annotation(data_dir, record)
        if len(annotation["targets"]) != 1 or answer_kind(record, annotation) != ANSWER_KINDS[0]:
            continue
        target = annotation["objects"][annotation["targets"][0]]
        visible = "visible <90 %" if target.get("visible_fraction", 1.0) < 0.9 else "visible >=90 %"
        for group in (f"shape {target['shape']}", f"size {target['size']}", visible):
            ious[group].append(record["iou"])
    return {group: {"n": len(v), "giou": sum(v) / len(v)} for group, v in sorted(ious.items())}


def query_kind_rates(per_sample: Path, data_dir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(family, kind): {"n", "right", "other_object", "giou"}}`` over the single-target answers: per query kind,
    the share that names the target and its cell, the share that names another object, and the mean IoU."""
    kinds: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    for record in _generate_records(per_sample):
        annotation = _annotation(data_dir, record)
        if len(annotation["targets"]) == 1:
            key = (annotation["family"], annotation.get("kind", "?"))
            kinds[key].append((answer_kind(record, annotation), record["iou"]))
    return {key: {"n": len(answers),
                  "right": sum(kind == ANSWER_KINDS[0] for kind, _ in answers) / len(answers),
                  "other_object": sum(kind.startswith("other object") for kind, _ in answers) / len(answers),
                  "giou": sum(iou for _, iou in answers) / len(answers)}
            for key, answers in kinds.items()}


def _figure(value: float, width: int = 0) -> str:
    """A score to three places, or "-" where nothing was scored (an empty row, or a cIoU over no target pixels)."""
    text = "-" if math.isnan(value) else f"{value:.3f}"
    return text.rjust(width)


def _print_kinds(title: str, kinds: dict[str, dict[str, float]]) -> None:
    print(f"{title}: {sum(kind['n'] for kind in kinds.values())}")
    for kind, b in kinds.items():
        print(f"  {kind:<29}{b['n']:>5} ({b['share']:>4.0%})  gIoU {_figure(b['giou'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="the --out folder of `reasonseg eval`")
    parser.add_argument("data_dir", type=Path, help="the split folder the eval read (its JSONs name each family)")
    args = parser.parse_args()
    if not (args.eval_dir / "per_sample.jsonl").is_file():
        parser.error(f"{args.eval_dir} has no per_sample.jsonl; pass the --out folder of `reasonseg eval`")
    if not any(args.data_dir.glob("*.json")):
        parser.error(f"{args.data_dir} has no scene JSONs; pass the split folder the eval read, e.g. runs/demo/world/test")
    scores = family_scores(args.eval_dir / "per_sample.jsonl", args.data_dir)
    print(f"{'family':<18}{'n':>5}{'gIoU':>8}{'cIoU':>8}{'no [SEG]':>10}")
    for family in sorted(scores, key=lambda f: (f.startswith("all"), f)):
        s = scores[family]
        print(f"{family:<18}{s['n']:>5}{_figure(s['giou'], 8)}{_figure(s['ciou'], 8)}{s['no_seg']:>10.2f}")
    breakdown = answer_breakdown(args.eval_dir / "per_sample.jsonl", args.data_dir)
    _print_kinds("single-target answers", breakdown)
    multi = multi_target_breakdown(args.eval_dir / "per_sample.jsonl", args.data_dir)
    _print_kinds("several-target answers", multi["kinds"])
    print(f"  every target's cell, no other  {multi['all_cells']:>4.0%}  gIoU {_figure(multi['all_cells_giou'])}")
    print(f"  targets whose cell is named {multi['target_recall']:.3f}; named cells on a target {multi['cell_precision']:.3f}")
    masks = right_answer_masks(args.eval_dir / "per_sample.jsonl", args.data_dir)
    print("masks of the answers naming the target and its cell:")
    for by in ("shape", "size", "visible"):
        print("  " + "; ".join(f"{group} {m['giou']:.3f} ({m['n']})" for group, m in masks.items() if group.startswith(by)))
    rates = query_kind_rates(args.eval_dir / "per_sample.jsonl", args.data_dir)
    weakest = sorted((key for key in rates if rates[key]["n"] >= MIN_KIND_ANSWERS), key=lambda key: rates[key]["right"])
    print(f"query kinds whose answers name the target and its cell least often (of those with >= {MIN_KIND_ANSWERS} answers):")
    for family, kind in weakest[:WEAKEST_KINDS_SHOWN]:
        r = rates[(family, kind)]
        print(f"  {family + '/' + kind:<29}{r['n']:>5}  right {r['right']:.2f}  other object {r['other_object']:.2f}"
              f"  gIoU {r['giou']:.3f}")


if __name__ == "__main__":
    main()
