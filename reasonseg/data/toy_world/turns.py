"""Question-answer turns about a scene that ask for no mask but for a place: what stage 2 (the toy LLaVA) learns
grounding from, and what stage 3 can keep mixing in.

* referring turns: "Which shape is the red star?" -> "It is the small red star at (3, 6).", the target's cell of the
  answers' grounding grid;
* list turns, a referring turn for several targets: "Segment all the stars." -> "They are the small red star at
  (3, 6) and the large blue star at (5, 2).", left to right as the several-target answers' [SEG]s;
* region turns, the other way round: "What is at (3, 6)?" -> "It is the small red star.", asked only of a cell that
  one object holds.
"""

from __future__ import annotations

from .queries import grid_cell, placed_name

REGION_QUESTIONS = ("What is at {place}?", "Which shape is at {place}?", "What do you see at {place}?")


def referring_queries(sample) -> list:
    """The sample's queries a referring turn can ask: one target, not the explanatory family."""
    return [q for q in sample.queries if len(q.targets) == 1 and q.family != "explanatory"]


def list_queries(sample) -> list:
    """The sample's queries a list turn can ask: the several-target family."""
    return [q for q in sample.queries if len(q.targets) > 1 and q.family == "multi_target"]


def referring_question_text(text: str, is_sentence: bool) -> str:
    """The referring turn's question about ``text``: a whole sentence as it is, a phrase as "Which shape is ...?"."""
    return text if is_sentence else f"Which shape is {text}?"


def referring_question(query) -> str:
    return referring_question_text(query.text, query.is_sentence)


def _referring_words(sample, query) -> str:
    """"It is the small red star at (3, 6)": the one target of ``query``, and its grid cell."""
    return f"It is {_placed(sample, query.targets[0])}"


def referring_turn(sample, query) -> tuple[str, str]:
    """("Which shape is the red star?", "It is the small red star at (3, 6).") for a query with one target."""
    return referring_question(query), f"{_referring_words(sample, query)}."


def _placed(sample, index: int) -> str:
    return placed_name(sample.objects[index], sample.width, sample.height)


def _listed(placed: list[str]) -> str:
    return f"They are {', '.join(placed[:-1])} and {placed[-1]}."


def list_turn(sample, query) -> tuple[str, str]:
    """("Segment all the stars.", "They are the small red star at (3, 6) and the large blue star at (5, 2).") for a
    several-target query: each target named and placed as a referring turn does, in the order of the query's
    [SEG]s, so stage 3 only has to add a [SEG] after each."""
    question = query.text if query.is_sentence else f"Find {query.text}."  # "Find each orange shape."
    return question, _listed([_placed(sample, index) for index in query.targets])


def list_seg_answer(sample, query) -> str:
    """A several-target query's answer in the list turn's words plus a [SEG] after each target: "They are the small
    red star at (3, 6) [SEG] and the large blue star at (5, 2) [SEG]." (for a stage 2 trained with list turns)"""
    return _listed([f"{_placed(sample, index)} [SEG]" for index in query.targets])


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
