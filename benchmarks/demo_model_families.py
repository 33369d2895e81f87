"""Per-query-family scores of a `reasonseg eval` run on the shapes world (the demo model card's table).

    reasonseg world generate --out runs/demo/world --split test --num 100
    reasonseg eval --data reasonseg:runs/demo/world --split test --mode generate --all-queries --out runs/demo/eval
    python benchmarks/demo_model_families.py runs/demo/eval runs/demo/world/test

Prints gIoU (mean IoU), cIoU (summed intersection over summed union) and the share of answers with no [SEG] per
family, read from the run's per_sample.jsonl and the family each sample's JSON names. The overall row counts only
queries with a target (a no-target query is scored by its no-[SEG] share).

Then it splits the single-target answers that name one grid cell ("... at (3, 6) [SEG]") by whether that cell holds
the target's innermost point: the mean IoU of each part says how much of the gap is the language model naming the
wrong place and how much is the mask decoder outlining the right place badly.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from reasonseg.data.toy_world.queries import point_cell

ANSWER_CELL = re.compile(r"\((\d+), (\d+)\)")  # "at (3, 6)" in a grounded answer


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


def cell_split(per_sample: Path, data_dir: Path) -> dict[str, dict[str, float]]:
    """``{"right cell" | "wrong cell": {"n", "giou"}}`` over single-target answers naming exactly one cell."""
    ious: dict[str, list[float]] = {"right cell": [], "wrong cell": []}
    for record in _generate_records(per_sample):
        annotation = _annotation(data_dir, record)
        cells = ANSWER_CELL.findall(record["answer"])
        if len(annotation["targets"]) != 1 or len(cells) != 1:
            continue
        target = annotation["objects"][annotation["targets"][0]]
        said = tuple(int(v) for v in cells[0])
        right = said == point_cell(target["point"], annotation["width"], annotation["height"])
        ious["right cell" if right else "wrong cell"].append(record["iou"])
    return {part: {"n": len(v), "giou": sum(v) / len(v) if v else float("nan")} for part, v in ious.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="the --out folder of `reasonseg eval`")
    parser.add_argument("data_dir", type=Path, help="the split folder the eval read (its JSONs name each family)")
    args = parser.parse_args()
    scores = family_scores(args.eval_dir / "per_sample.jsonl", args.data_dir)
    print(f"{'family':<18}{'n':>5}{'gIoU':>8}{'cIoU':>8}{'no [SEG]':>10}")
    for family in sorted(scores, key=lambda f: (f.startswith("all"), f)):
        s = scores[family]
        print(f"{family:<18}{s['n']:>5}{s['giou']:>8.3f}{s['ciou']:>8.3f}{s['no_seg']:>10.2f}")
    split = cell_split(args.eval_dir / "per_sample.jsonl", args.data_dir)
    total = sum(part["n"] for part in split.values())
    print(f"single-target answers naming one cell: {total}")
    for part, s in split.items():
        print(f"  {part:<11} {s['n']:>5} ({s['n'] / max(total, 1):.0%})  gIoU {s['giou']:.3f}")


if __name__ == "__main__":
    main()
