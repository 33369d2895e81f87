"""Does a built or trained demo model name the right object and the right grid cell, asked the way stage 2 asks?

    reasonseg build --vlm artifacts/demo/toy_llava --sam artifacts/demo/toy_sam --out runs/demo/built
    python benchmarks/demo_referring_probe.py runs/demo/built runs/demo/world/test
    python benchmarks/demo_referring_probe.py reasonseg/assets/demo_model runs/demo/world/test

For every single-target query of the attribute, spatial, superlative and reasoning families in a generated split
(`reasonseg world generate`), the model answers freely (greedy, `Segmenter.predict`) the question stage 2's
referring turns use ("Which shape is the red star?", or the query itself when it is a sentence). Printed: the share
of answers whose words give the target's colour and shape, whose first "(column, row)" is the target's grid cell
(the cell of its innermost point), both, and a cell within one of it. The same question fits a stage-2 build (which
answers "It is the small red star at (3, 6).") and a stage-3 model (which adds [SEG]), so the two can be compared:
how much of stage 2's grounding stage 3 keeps (docs/demo_model.md, session 11). `--question eval` asks instead what
`reasonseg eval` asks ("What is the red star in this image? Please output segmentation mask."), to tell the question's
wording apart from the answer's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from demo_model_families import read_grounding  # the sibling benchmark (scripts run with benchmarks/ on sys.path)
from reasonseg.data.toy_world.queries import ALL_ONE_TARGET_KINDS
from reasonseg.data.toy_world.turns import referring_question_text
from reasonseg.errors import ReasonSegError
from reasonseg.evaluation.runner import lisa_question_text
from reasonseg.inference.segmenter import Segmenter

PROBED_FAMILIES = ("attribute", "spatial", "superlative", "reasoning")


QUESTION_FORMS = {"stage2": referring_question_text, "eval": lisa_question_text}


def probe(segmenter: Segmenter, split_dir: Path, limit: int | None = None, question=referring_question_text,
          kinds=None) -> dict:
    """The shares over the probed queries (only those of ``kinds``, when given), and ``by_kind``: each query kind's
    ``(queries, share naming the target and its cell)``."""
    counts = {"names target": 0, "names its cell": 0, "both": 0, "cell within one": 0}
    asked = 0
    by_kind: dict[str, list[int]] = {}
    for path in sorted(split_dir.glob("*.json"))[:limit]:
        annotation = json.loads(path.read_text())
        if len(annotation["targets"]) != 1 or annotation["family"] not in PROBED_FAMILIES:
            continue
        if kinds is not None and annotation.get("kind") not in kinds:
            continue
        image = Image.open(path.with_suffix(".png")).convert("RGB")
        answer = segmenter.predict(image, question(annotation["text"][0], annotation["is_sentence"]), max_new_tokens=40).text
        named, offsets = read_grounding(answer, annotation)
        right_cell = bool(offsets) and offsets[0] == 0
        asked += 1
        counts["names target"] += named
        counts["names its cell"] += right_cell
        counts["both"] += named and right_cell
        counts["cell within one"] += bool(offsets) and offsets[0] <= 1
        tally = by_kind.setdefault(annotation.get("kind", "?"), [0, 0])
        tally[0] += 1
        tally[1] += named and right_cell
    return {"queries": asked, **{name: count / max(asked, 1) for name, count in counts.items()},
            "by_kind": {kind: (n, right / n) for kind, (n, right) in sorted(by_kind.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a reasonseg model folder (a `reasonseg build` output or an exported stage 3)")
    parser.add_argument("split_dir", type=Path, help="a split written by `reasonseg world generate`")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N query files")
    parser.add_argument("--question", choices=sorted(QUESTION_FORMS), default="stage2",
                        help="ask as stage 2's referring turns do (default) or as `reasonseg eval` does")
    parser.add_argument("--kinds", default=None,
                        help="comma-separated query kinds to probe only (e.g. only_of_kind,closest), each one's "
                             "share printed as well")
    args = parser.parse_args()
    kinds = None if args.kinds is None else {kind.strip() for kind in args.kinds.split(",") if kind.strip()}
    if kinds is not None and not (kinds and kinds <= ALL_ONE_TARGET_KINDS):
        parser.error(f"--kinds {args.kinds!r}: use one-target kinds of {', '.join(PROBED_FAMILIES)}: "
                     f"{', '.join(sorted(ALL_ONE_TARGET_KINDS))}")
    if not (args.split_dir / "qa.jsonl").is_file():
        parser.error(f"{args.split_dir} is not a split folder; pass one `reasonseg world generate` wrote, "
                     f"e.g. runs/demo/world/test")
    try:
        segmenter = Segmenter.from_pretrained(args.model)
    except ReasonSegError as err:  # e.g. a stage-2 LLaVA folder: the probe needs a built one
        parser.error(str(err))
    scores = probe(segmenter, args.split_dir, args.limit, QUESTION_FORMS[args.question], kinds)
    by_kind = scores.pop("by_kind")
    print(f"{args.model}: {scores.pop('queries')} single-target queries of {', '.join(PROBED_FAMILIES)}"
          f"{'' if kinds is None else ' (kinds ' + ', '.join(sorted(kinds)) + ')'}, asked the {args.question} way")
    for name, share in scores.items():
        print(f"  {name:<16} {share:.3f}")
    if kinds is not None:
        print("  target and its cell, by kind:")
        for kind, (count, right) in by_kind.items():
            print(f"    {kind:<18}{count:>4}  {right:.3f}")


if __name__ == "__main__":
    main()
