"""Question-answer turns about a scene that ask for no mask but for a place: what stage 2 (the toy LLaVA) learns
grounding from, and what stage 3 can keep mixing in.

* referring turns: "Which shape is the red star?" -> "It is the small red star at (3, 6).", the target's cell of the
  answers' grounding grid;
* region turns, the other way round: "What is at (3, 6)?" -> "It is the small red star.", asked only of a cell that
  one object holds.
"""

from __future__ import annotations

from .queries import grid_cell

REGION_QUESTIONS = ("What is at {place}?", "Which shape is at {place}?", "What do you see at {place}?")


def referring_queries(sample) -> list:
    """The sample's queries a referring turn can ask: one target, not the explanatory family."""
    return [q for q in sample.queries if len(q.targets) == 1 and q.family != "explanatory"]


def referring_question_text(text: str, is_sentence: bool) -> str:
    """The referring turn's question about ``text``: a whole sentence as it is, a phrase as "Which shape is ...?"."""
    return text if is_sentence else f"Which shape is {text}?"


def referring_question(query) -> str:
    return referring_question_text(query.text, query.is_sentence)


def _referring_words(sample, query) -> str:
    """"It is the small red star at (3, 6)": the one target of ``query``, and its grid cell."""
    target = sample.objects[query.targets[0]]
    column, row = grid_cell(target, sample.width, sample.height)
    return f"It is the {target.describe(with_size=True)} at ({column}, {row})"


def referring_turn(sample, query) -> tuple[str, str]:
    """("Which shape is the red star?", "It is the small red star at (3, 6).") for a query with one target."""
    return referring_question(query), f"{_referring_words(sample, query)}."


def referring_seg_answer(sample, query) -> str:
    """A one-target query's answer in the referring turn's words plus its mask: "It is the small red star at (3, 6)
    [SEG]." (an explanatory query keeps its reason after it), so that stage 3 adds only [SEG] to what stage 2 says."""
    answer = f"{_referring_words(sample, query)} [SEG]."
    return f"{answer} {query.reason}" if query.family == "explanatory" and query.reason else answer


def objects_alone_in_their_cell(sample) -> list[tuple[tuple[int, int], object]]:
    """``((column, row), object)`` for each object whose grid cell holds no other object's innermost point."""
    cells = [grid_cell(obj, sample.width, sample.height) for obj in sample.objects]
    return [(cell, obj) for cell, obj in zip(cells, sample.objects) if cells.count(cell) == 1]


def region_turn(cell: tuple[int, int], obj, question_template: str = REGION_QUESTIONS[0]) -> tuple[str, str]:
    """("What is at (3, 6)?", "It is the small red star.")."""
    return question_template.format(place=f"({cell[0]}, {cell[1]})"), f"It is the {obj.describe(with_size=True)}."
