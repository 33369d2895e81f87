"""Query families, their phrasings and answers, and the language-only question-answer pairs about a scene.

Every family first lists the *candidates* the scene supports: a target set with the noun phrases and sentences that
describe it, each candidate checked to be unambiguous (clear margins for positions and sizes, unique attributes).
Then one candidate is drawn (kind first, uniformly among the kinds available, so rare kinds are not drowned out),
and one phrasing and one answer template. A family with no valid candidate gives no query for that scene.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from .scene import Scene, SceneObject
from .vocab import (
    COLOUR_NAMES,
    COLOUR_THINGS,
    CORNERS,
    MIXES,
    SHAPE_CLUES,
    SHAPES,
    SIDES,
    SIZE_NAMES,
    article,
    join_words,
    number_word,
    plural,
    seg_list,
)

FAMILIES: tuple[str, ...] = (
    "attribute",
    "spatial",
    "superlative",
    "reasoning",
    "multi_target",
    "no_target",
    "explanatory",
)

# the one-target kinds of each family that names its target (a query's ``kind``)
ONE_TARGET_KINDS: dict[str, tuple[str, ...]] = {
    "attribute": ("colour", "colour_shape", "shape", "size_colour_shape", "size_shape"),
    "spatial": ("above", "below", "bottommost", "closest", "farthest", "left_of", "leftmost", "right_of", "rightmost",
                "topmost"),
    "superlative": ("largest", "odd_colour", "odd_shape", "only_of_colour", "only_of_kind", "smallest"),
    "reasoning": ("colour_clue", "colour_mix", "could_roll", "fewest_corners", "most_corners", "no_corners",
                  "shape_clue", "sides"),
}
ALL_ONE_TARGET_KINDS = frozenset(kind for kinds in ONE_TARGET_KINDS.values() for kind in kinds)

# margins that make a query unambiguous
EXTREME_MARGIN = 0.07  # leftmost etc.: the runner-up's centroid is this fraction of the image side further in
AREA_RATIO = 1.5  # largest/smallest: visible areas differ by at least this factor
SIZE_WORD_RATIO = 1.3  # "the small circle": its area and every same-kind object's differ by this factor, same order
RELATION_MIN = 0.1  # "left of": the target is at least this fraction of the shorter side away, along the direction
RELATION_CONE = 0.5  # ... and at most this many times that distance off the axis (about 27 degrees)
RELATION_EXCLUDE = 2.0  # every other shape is off the axis by more than this times its distance along (63 degrees)
CLOSEST_RATIO = 1.5  # closest/farthest: runner-up centroid distance ratio
PHRASE_PROBABILITY = 0.2  # share of queries given as a bare noun phrase (is_sentence False)

SINGLE_TEMPLATES = (
    "Where is {np}?",
    "Can you segment {np}?",
    "Could you find {np} in this image?",
    "Which part of the image shows {np}?",
    "Segment {np}.",
    "Please segment {np}.",
    "Find {np}.",
    "Highlight {np}.",
    "Show me {np}.",
    "Please mark {np} in the picture.",
    "I am looking for {np}.",
    "I would like a mask of {np}.",
)
SINGLE_ANSWERS = (
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "[SEG].",
    "It is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "{Name} is [SEG].",
    "Here is {name}: [SEG].",
)
MULTI_PHRASES = ("all the {pl}", "every {sg}", "each {sg}")
MULTI_TEMPLATES = (
    "Segment all the {pl}.",
    "Segment every {sg}.",
    "Where are all the {pl}?",
    "Find each {sg} in the image.",
    "Show me all the {pl}.",
    "I need a mask for every {sg}.",
    "Can you highlight all the {pl}?",
    "How many {pl} are there? Segment each of them.",
)
MULTI_ANSWERS = ("Sure, they are {segs}.", "{Segs}.", "Sure, {segs}.", "There are {count} {pl}: {segs}.")
ABSENT_ANSWERS = (
    "There is no {what} in this image.",
    "Sorry, I can't find {a_what} here.",
    "I don't see {a_what} in the image.",
)
ABSENT_PLURAL_ANSWERS = ("There are no {pl} in this image.", "Sorry, I can't find any {pl} here.")
EXPLAIN_QUESTION_SUFFIXES = (" Please explain why.", " Explain your answer.", " Why?")
EXPLAIN_ANSWERS = ("Sure, it is [SEG]. {reason}", "[SEG]. {reason}", "{Name} is [SEG]. {reason}")


GROUNDING_GRID = 8  # cells per side of the grid an answer names before each [SEG] (the demo LM's 8x8 image tokens)


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def grid_cell(obj: SceneObject, width: int, height: int) -> tuple[int, int]:
    """``(column, row)`` of the grid cell holding the object's innermost point (0-based, from the top left)."""
    return point_cell(obj.point, width, height)


def placed_name(obj: SceneObject, width: int, height: int) -> str:
    """"the small red star at (3, 6)": the object's size, colour and shape, and its grid cell, as every grounded answer
    and stage 2's referring and list turns name it."""
    column, row = grid_cell(obj, width, height)
    return f"the {obj.describe(with_size=True)} at ({column}, {row})"


def point_cell(point, width: int, height: int) -> tuple[int, int]:
    """``(column, row)`` of the grid cell holding pixel ``(x, y)`` of a ``width`` x ``height`` image."""
    x, y = point
    return min(GROUNDING_GRID - 1, x * GROUNDING_GRID // width), min(GROUNDING_GRID - 1, y * GROUNDING_GRID // height)


def ground(answer: str, scene: Scene, targets: tuple[int, ...]) -> str:
    """Put "the {size} {colour} {shape} at (column, row)" before each [SEG] of ``answer``, for its target in order:
    the answer first says which object each mask is and where, as the toy LLaVA's referring turns do ("It is the
    small red star at (3, 6)."), so the state feeding each [SEG] follows tokens that name the target and its place."""
    pieces = answer.split("[SEG]")
    if len(pieces) - 1 != len(targets):
        raise ValueError(f"answer {answer!r} has {len(pieces) - 1} [SEG] for {len(targets)} targets")
    out = pieces[0]
    for target, rest in zip(targets, pieces[1:]):
        out += f"{placed_name(scene.objects[target], scene.width, scene.height)} [SEG]" + rest
    return cap(out)


@dataclass(frozen=True)
class Query:
    """One query about a scene. ``targets`` are object indices in the order the answer's [SEG]s appear."""

    family: str
    kind: str
    text: str
    is_sentence: bool
    answer: str
    targets: tuple[int, ...]
    alternatives: tuple[str, ...] = ()  # other phrasings of the same query, same is_sentence
    reason: str | None = None  # explanatory: the reason sentence in the answer

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "kind": self.kind,
            "text": self.text,
            "is_sentence": self.is_sentence,
            "answer": self.answer,
            "targets": list(self.targets),
            "alternatives": list(self.alternatives),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class QAPair:
    """A question and answer about the scene, text only (no [SEG]): for language pre-training."""

    question: str
    answer: str
    kind: str

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "kind": self.kind}


@dataclass
class _Candidate:
    kind: str
    targets: tuple[int, ...]
    phrases: list[str]  # noun phrases: the is_sentence=False forms, also fed to the sentence templates
    sentences: list[str] = field(default_factory=list)  # candidate-specific full sentences
    reason: str | None = None  # one sentence, ending with a full stop
    absent: list[str] | None = None  # no-target answers
    plural: str | None = None  # multi-target: plural noun for "There are three circles: ..."


# ------------------------------------------------------------------------------------------------------- the world
class _World:
    """Precomputed facts about a scene that candidate builders share."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.objs: list[SceneObject] = scene.objects
        self.n = len(self.objs)
        self.width, self.height = scene.width, scene.height
        self.short = min(self.width, self.height)
        self.colour_count = Counter(o.colour for o in self.objs)
        self.shape_count = Counter(o.shape for o in self.objs)
        self.pair_count = Counter((o.colour, o.shape) for o in self.objs)
        self.centroids = np.array([o.centroid for o in self.objs], dtype=np.float64).reshape(-1, 2)
        self._descriptions = [self._describe(o) for o in self.objs]
        self._gaps: np.ndarray | None = None

    # --- naming
    def _size_word_ok(self, o: SceneObject, group: list[SceneObject]) -> bool:
        """The size word alone separates ``o`` from ``group`` (others of its kind), consistently with the areas."""
        if not group:
            return False
        rank = SIZE_NAMES.index(o.size)
        for g in group:
            diff = rank - SIZE_NAMES.index(g.size)
            if diff == 0:
                return False
            big, small = (o, g) if diff > 0 else (g, o)
            if big.area < SIZE_WORD_RATIO * small.area or big.extent <= small.extent:
                return False
        return True

    def _describe(self, o: SceneObject) -> list[tuple[str, list[str], str]]:
        """Unique attribute descriptions of ``o``: (kind, noun phrases, reason), most natural first."""
        out = []
        c, s = o.colour, o.shape
        if self.pair_count[(c, s)] == 1:
            out.append(("colour_shape", [f"the {c} {s}", f"the {s} that is {c}", f"the {c}-coloured {s}"],
                        f"It is the only {c} {s} in the image."))
        if self.shape_count[s] == 1:
            out.append(("shape", [f"the {s}", f"the only {s}"], f"It is the only {s} in the image."))
        if self.colour_count[c] == 1:
            out.append(("colour", [f"the {c} shape", f"the shape that is {c}", f"the {c} object"],
                        f"It is the only {c} shape in the image."))
        same_pair = [g for g in self.objs if g is not o and g.colour == c and g.shape == s]
        if same_pair and self._size_word_ok(o, same_pair):
            out.append(("size_colour_shape", [f"the {o.size} {c} {s}", f"the {c} {s} that is {o.size}"],
                        f"Of the {number_word(len(same_pair) + 1)} {c} {plural(s)}, it is the {o.size} one."))
        same_shape = [g for g in self.objs if g is not o and g.shape == s]
        if same_shape and self._size_word_ok(o, same_shape):
            out.append(("size_shape", [f"the {o.size} {s}"],
                        f"Of the {number_word(len(same_shape) + 1)} {plural(s)}, it is the {o.size} one."))
        return out

    def descriptions(self, i: int) -> list[tuple[str, list[str], str]]:
        return self._descriptions[i]

    def name(self, i: int) -> str:
        """How answers and other queries refer to object i: its first unique description, else its full words."""
        found = self._descriptions[i]
        if found:
            return found[0][1][0]
        o = self.objs[i]
        return f"the {o.size} {o.colour} {o.shape}"

    def is_named(self, i: int) -> bool:
        return bool(self._descriptions[i])

    # --- geometry
    def gaps(self) -> np.ndarray:
        """n x n smallest distance between the objects' visible outlines (pixels; outlines thinned to <= 48 points,
        so within a few pixels of exact, far below the margins queries use)."""
        if self._gaps is None:
            pts, owner = [], []
            for i, o in enumerate(self.objs):
                step = -(-len(o.outline) // 48)
                p = o.outline[::step].astype(np.float32)
                pts.append(p)
                owner.append(np.full(len(p), i))
            allp, owner = np.concatenate(pts), np.concatenate(owner)
            d = np.sqrt(((allp[:, None, :] - allp[None, :, :]) ** 2).sum(-1))
            starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
            per_row = np.minimum.reduceat(d, starts, axis=1)  # points x objects
            gaps = np.minimum.reduceat(per_row, starts, axis=0)  # objects x objects
            np.fill_diagonal(gaps, 0.0)
            self._gaps = gaps
        return self._gaps

    def groups(self) -> list[tuple[list[int], str]]:
        """Groups a superlative or position can range over: (members, singular noun), at least two members."""
        out = []
        if self.n >= 2:
            out.append((list(range(self.n)), "shape"))
        for c in COLOUR_NAMES:
            if self.colour_count[c] >= 2 and self.colour_count[c] < self.n:
                out.append(([i for i, o in enumerate(self.objs) if o.colour == c], f"{c} shape"))
        for s in SHAPES:
            if self.shape_count[s] >= 2:
                out.append(([i for i, o in enumerate(self.objs) if o.shape == s], s))
        return out

    def left_to_right(self, indices) -> tuple[int, ...]:
        return tuple(sorted(indices, key=lambda i: (self.objs[i].centroid[0], self.objs[i].centroid[1], i)))


# -------------------------------------------------------------------------------------------- candidate builders
def _attribute(w: _World) -> list[_Candidate]:
    out = []
    for i in range(w.n):
        for kind, phrases, reason in w.descriptions(i):
            out.append(_Candidate(kind, (i,), phrases, reason=reason))
    return out


_EXTREMES = {
    # direction: (axis, sign, phrases, sentences, reason)
    "leftmost": (0, 1, ("the leftmost {noun}", "the {noun} furthest to the left", "the {noun} on the far left"),
                 ("Which {noun} is furthest to the left?", "Which {noun} is the leftmost one?"),
                 "It is further to the left than any other {noun}."),
    "rightmost": (0, -1, ("the rightmost {noun}", "the {noun} furthest to the right", "the {noun} on the far right"),
                  ("Which {noun} is furthest to the right?", "Which {noun} is the rightmost one?"),
                  "It is further to the right than any other {noun}."),
    "topmost": (1, 1, ("the topmost {noun}", "the highest {noun}", "the {noun} nearest the top"),
                ("Which {noun} is highest up in the picture?", "Which {noun} is the topmost one?"),
                "It is higher up than any other {noun}."),
    "bottommost": (1, -1, ("the bottommost {noun}", "the lowest {noun}", "the {noun} nearest the bottom"),
                   ("Which {noun} is lowest in the picture?", "Which {noun} is the bottommost one?"),
                   "It is lower down than any other {noun}."),
}
_RELATIONS = {
    # direction: (unit vector, phrases, sentences)
    "left_of": ((-1, 0), ("the shape to the left of {ref}", "the shape on the left of {ref}"),
                ("Which shape is to the left of {ref}?", "What is to the left of {ref}?")),
    "right_of": ((1, 0), ("the shape to the right of {ref}", "the shape on the right of {ref}"),
                 ("Which shape is to the right of {ref}?", "What is to the right of {ref}?")),
    "above": ((0, -1), ("the shape above {ref}", "the shape sitting above {ref}"),
              ("Which shape is above {ref}?", "What is above {ref}?")),
    "below": ((0, 1), ("the shape below {ref}", "the shape underneath {ref}"),
              ("Which shape is below {ref}?", "What is underneath {ref}?")),
}
_RELATION_WORDS = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}


def _extreme(w: _World, members: list[int], axis: int, sign: int) -> int | None:
    """The member extreme along axis (sign 1: smallest coordinate), by centroid with a clear margin and by box edge."""
    values = sorted((sign * w.objs[i].centroid[axis], i) for i in members)
    side = w.width if axis == 0 else w.height
    if values[1][0] - values[0][0] < EXTREME_MARGIN * side:
        return None
    best = values[0][1]
    edge = [(sign * (w.objs[i].bbox[axis] if sign > 0 else w.objs[i].bbox[axis + 2]), i) for i in members]
    if min(edge)[1] != best or sorted(edge)[1][0] == min(edge)[0]:
        return None
    return best


def _spatial(w: _World) -> list[_Candidate]:
    out = []
    for members, noun in w.groups():
        for kind, (axis, sign, phrases, sentences, reason) in _EXTREMES.items():
            best = _extreme(w, members, axis, sign)
            if best is not None:
                out.append(_Candidate(kind, (best,), [p.format(noun=noun) for p in phrases],
                                      [s.format(noun=noun) for s in sentences], reason.format(noun=noun)))
    if w.n < 2:
        return out
    c = w.centroids
    for r in range(w.n):
        if not w.is_named(r):
            continue
        ref = w.name(r)
        others = [i for i in range(w.n) if i != r]
        for kind, ((ux, uy), phrases, sentences) in _RELATIONS.items():
            along = (c[others, 0] - c[r, 0]) * ux + (c[others, 1] - c[r, 1]) * uy
            across = np.abs((c[others, 0] - c[r, 0]) * uy - (c[others, 1] - c[r, 1]) * ux)
            strong = (along >= RELATION_MIN * w.short) & (across <= RELATION_CONE * along)
            near = (along > 0) & (across < RELATION_EXCLUDE * along)
            if strong.sum() == 1 and near.sum() == 1:
                t = others[int(np.flatnonzero(strong)[0])]
                out.append(_Candidate(kind, (t,), [p.format(ref=ref) for p in phrases],
                                      [s.format(ref=ref) for s in sentences],
                                      f"It is {_RELATION_WORDS[kind]} {ref}, and no other shape is."))
        if len(others) >= 2:
            dist = np.sqrt(((c[others] - c[r]) ** 2).sum(1))
            gap = w.gaps()[r, others]
            order, gap_order = np.argsort(dist, kind="stable"), np.argsort(gap, kind="stable")
            first, second = order[0], order[1]
            if (gap_order[0] == first and dist[second] >= CLOSEST_RATIO * dist[first]
                    and gap[gap_order[1]] >= max(CLOSEST_RATIO * gap[first], gap[first] + 0.05 * w.short)):
                out.append(_Candidate("closest", (others[first],),
                                      [f"the shape closest to {ref}", f"the shape nearest to {ref}"],
                                      [f"Which shape is closest to {ref}?", f"What is the nearest shape to {ref}?"],
                                      f"It is nearer to {ref} than any other shape is."))
            last, runner = order[-1], order[-2]
            if (gap_order[-1] == last and dist[last] >= CLOSEST_RATIO * dist[runner]
                    and gap[last] >= gap[gap_order[-2]] + 0.05 * w.short):
                out.append(_Candidate("farthest", (others[last],),
                                      [f"the shape farthest from {ref}", f"the shape furthest away from {ref}"],
                                      [f"Which shape is farthest from {ref}?"],
                                      f"It is further from {ref} than any other shape is."))
    return out


def _superlative(w: _World) -> list[_Candidate]:
    out = []
    for members, noun in w.groups():
        areas = sorted((w.objs[i].area, i) for i in members)
        if areas[-1][0] >= AREA_RATIO * areas[-2][0]:
            out.append(_Candidate("largest", (areas[-1][1],), [f"the largest {noun}", f"the biggest {noun}"],
                                  [f"Which {noun} is the largest?", f"Which is the biggest {noun}?"],
                                  f"It covers more of the image than any other {noun}."))
        if areas[1][0] >= AREA_RATIO * areas[0][0]:
            out.append(_Candidate("smallest", (areas[0][1],), [f"the smallest {noun}", f"the tiniest {noun}"],
                                  [f"Which {noun} is the smallest?", f"Which is the tiniest {noun}?"],
                                  f"It is smaller than every other {noun}."))
    if w.n >= 3:
        lonely = [i for i, o in enumerate(w.objs) if w.colour_count[o.colour] == 1]
        if len(lonely) == 1:
            o = w.objs[lonely[0]]
            out.append(_Candidate(
                "only_of_colour", (lonely[0],),
                ["the only shape of its colour", "the shape whose colour appears only once"],
                ["Which shape has a colour that no other shape shares?", "Which shape is the only one of its colour?"],
                f"It is the only {o.colour} shape, while every other colour appears more than once."))
        lonely = [i for i, o in enumerate(w.objs) if w.shape_count[o.shape] == 1]
        if len(lonely) == 1:
            o = w.objs[lonely[0]]
            out.append(_Candidate(
                "only_of_kind", (lonely[0],),
                ["the only shape of its kind", "the shape whose kind appears only once"],
                ["Which shape is the only one of its kind?"],
                f"It is the only {o.shape}, while every other kind of shape appears more than once."))
    if w.n >= 3:
        for c in COLOUR_NAMES:
            if w.colour_count[c] == w.n - 1:
                t = next(i for i, o in enumerate(w.objs) if o.colour != c)
                out.append(_Candidate(
                    "odd_colour", (t,),
                    [f"the shape that is not {c}", "the shape with a different colour from the rest"],
                    [f"Which shape is not {c}?", "Which shape has a different colour from all the others?"],
                    f"Every other shape is {c}, but this one is {w.objs[t].colour}."))
        for s in SHAPES:
            if w.shape_count[s] == w.n - 1:
                t = next(i for i, o in enumerate(w.objs) if o.shape != s)
                out.append(_Candidate(
                    "odd_shape", (t,), [f"the shape that is not {article(s)} {s}", "the odd one out"],
                    [f"Which shape is not {article(s)} {s}?", "Which shape is a different kind from all the others?"],
                    f"Every other shape is {article(s)} {s}, but this one is {article(w.objs[t].shape)} "
                    f"{w.objs[t].shape}."))
    return out


def _reasoning(w: _World) -> list[_Candidate]:
    out = []
    if w.n >= 2:
        corners = sorted((CORNERS[o.shape], i) for i, o in enumerate(w.objs))
        top, second = corners[-1], corners[-2]
        if top[0] > second[0]:
            s = w.objs[top[1]].shape
            out.append(_Candidate(
                "most_corners", (top[1],),
                ["the shape with the most corners", "the shape with the greatest number of corners"],
                ["Which shape has the most corners?", "Which of these shapes has the most corners?"],
                f"{cap(article(s))} {s} has {number_word(top[0])} corners, more than any other shape here."))
        low, second = corners[0], corners[1]
        if low[0] > 0 and low[0] < second[0]:
            s = w.objs[low[1]].shape
            out.append(_Candidate(
                "fewest_corners", (low[1],), ["the shape with the fewest corners"],
                ["Which shape has the fewest corners?"],
                f"{cap(article(s))} {s} has only {number_word(low[0])} corners, fewer than any other shape here."))
        if w.shape_count["circle"] == 1 and w.shape_count["heart"] == 0:
            t = next(i for i, o in enumerate(w.objs) if o.shape == "circle")
            out.append(_Candidate(
                "no_corners", (t,), ["the shape with no corners", "the shape without any corners", "the round shape"],
                ["Which shape has no corners?", "Which of these shapes has no corners at all?"],
                "It is a circle, and a circle has no corners."))
    if w.n >= 2 and w.shape_count["circle"] == 1:
        t = next(i for i, o in enumerate(w.objs) if o.shape == "circle")
        out.append(_Candidate(
            "could_roll", (t,), ["the shape that could roll", "the shape that would roll away if pushed"],
            ["Which shape could roll away?", "Which of these shapes could roll like a wheel?",
             "If you gave each shape a push, which one would roll away?"],
            "It is a circle: with no corners or flat sides, it can roll."))
    for s, n_sides in SIDES.items():
        if w.shape_count[s] == 1:
            t = next(i for i, o in enumerate(w.objs) if o.shape == s)
            word = number_word(n_sides)
            phrases = [f"the shape with {word} sides", f"the {word}-sided shape"]
            if s == "square":
                phrases = ["the shape with four equal sides", "the shape with four right angles"]
            out.append(_Candidate("sides", (t,), phrases, [f"Which shape has {word} sides?"],
                                  f"{cap(article(s))} {s} has {word} sides, and it is the only {s} here."))
    for s in SHAPES:
        if w.shape_count[s] == 1 and w.n >= 2:
            t = next(i for i, o in enumerate(w.objs) if o.shape == s)
            for clause, question, fact in SHAPE_CLUES[s]:
                out.append(_Candidate("shape_clue", (t,), [f"the shape {clause}"], [question],
                                      f"{fact}, and it is the only {s} here."))
    for c in COLOUR_NAMES:
        members = [i for i, o in enumerate(w.objs) if o.colour == c]
        things = COLOUR_THINGS[c]
        if len(members) == 1 and w.n >= 2:
            for thing in things:
                out.append(_Candidate("colour_clue", (members[0],),
                                      [f"the shape that is the colour of {thing}", f"the shape coloured like {thing}"],
                                      [f"Which shape has the colour of {thing}?"],
                                      f"{cap(thing)} is {c}, and this is the only {c} shape."))
        for s in SHAPES:
            pair = [i for i in members if w.objs[i].shape == s]
            if len(pair) == 1 and w.shape_count[s] >= 2:
                thing = things[0]
                out.append(_Candidate("colour_clue", (pair[0],), [f"the {s} that is the colour of {thing}"],
                                      [f"Which {s} has the colour of {thing}?"],
                                      f"{cap(thing)} is {c}, and this is the only {c} {s}."))
        if c in MIXES:
            a, b = MIXES[c]
            if len(members) == 1 and w.n >= 2:
                out.append(_Candidate(
                    "colour_mix", (members[0],),
                    [f"the shape whose colour you get by mixing {a} and {b}",
                     f"the shape painted in the colour that {a} and {b} make together"],
                    [f"Which shape has the colour you get by mixing {a} and {b} paint?"],
                    f"Mixing {a} and {b} gives {c}, and this is the only {c} shape."))
            for s in SHAPES:
                pair = [i for i in members if w.objs[i].shape == s]
                if len(pair) == 1 and w.shape_count[s] >= 2:
                    out.append(_Candidate("colour_mix", (pair[0],), [f"the {s} whose colour is a mix of {a} and {b}"],
                                          [f"Which {s} has the colour you get by mixing {a} and {b}?"],
                                          f"Mixing {a} and {b} gives {c}, and this is the only {c} {s}."))
    return out


def _multi(sg: str, pl: str, kind: str, targets: tuple[int, ...]) -> _Candidate:
    return _Candidate(kind, targets, [p.format(sg=sg, pl=pl) for p in MULTI_PHRASES],
                      [t.format(sg=sg, pl=pl) for t in MULTI_TEMPLATES], plural=pl)


def _multi_target(w: _World) -> list[_Candidate]:
    out = []
    objs = w.objs
    for s in SHAPES:
        if w.shape_count[s] >= 2:
            members = w.left_to_right(i for i, o in enumerate(objs) if o.shape == s)
            out.append(_multi(s, plural(s), "all_of_shape", members))
    for c in COLOUR_NAMES:
        if w.colour_count[c] >= 2:
            out.append(_multi(f"{c} shape", f"{c} shapes", "all_of_colour",
                              w.left_to_right(i for i, o in enumerate(objs) if o.colour == c)))
    for (c, s), count in w.pair_count.items():
        if count >= 2:
            out.append(_multi(f"{c} {s}", f"{c} {plural(s)}", "all_of_colour_shape",
                              w.left_to_right(i for i, o in enumerate(objs) if (o.colour, o.shape) == (c, s))))
    if w.n >= 2:
        out.append(_multi("shape", "shapes", "all", w.left_to_right(range(w.n))))
    with_corners = [i for i, o in enumerate(objs) if CORNERS[o.shape] > 0]
    if len(with_corners) >= 2 and len(with_corners) < w.n:
        out.append(_multi("shape with corners", "shapes with corners", "all_with_corners",
                          w.left_to_right(with_corners)))
    if w.shape_count["circle"] >= 2:
        cand = _multi("shape that could roll", "shapes that could roll", "all_that_roll",
                      w.left_to_right(i for i, o in enumerate(objs) if o.shape == "circle"))
        out.append(cand)
    repeated = [c for c, k in w.colour_count.items() if k >= 2]
    if len(repeated) == 1 and w.colour_count[repeated[0]] == 2 and w.n >= 3:
        pair = w.left_to_right(i for i, o in enumerate(objs) if o.colour == repeated[0])
        out.append(_Candidate("same_colour_pair", pair,
                              ["the two shapes that share a colour", "the pair of shapes with the same colour"],
                              ["Which two shapes have the same colour?", "Segment the two shapes that share a colour."],
                              plural="shapes that share a colour"))
    return out


def _absent(what: str) -> list[str]:
    a_what = f"{article(what)} {what}"
    return [t.format(what=what, a_what=a_what) for t in ABSENT_ANSWERS]


def _no_target(w: _World, rng: random.Random) -> list[_Candidate]:
    out = []
    present_pairs = set(w.pair_count)
    # near misses first: a colour or a shape that is in the scene, in a combination that is not
    pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present_pairs]
    near = [p for p in pairs if w.colour_count[p[0]] or w.shape_count[p[1]]]
    for c, s in rng.sample(near or pairs, min(3, len(near or pairs))):
        out.append(_Candidate("colour_shape", (), [f"the {c} {s}", f"the {s} that is {c}"], absent=_absent(f"{c} {s}")))
    missing_shapes = [s for s in SHAPES if not w.shape_count[s]]
    missing_colours = [c for c in COLOUR_NAMES if not w.colour_count[c]]
    if missing_shapes:
        s = rng.choice(missing_shapes)
        out.append(_Candidate("shape", (), [f"the {s}"], absent=_absent(s)))
        pl = plural(s)
        out.append(_Candidate("all_of_shape", (), [p.format(sg=s, pl=pl) for p in MULTI_PHRASES],
                              [t.format(sg=s, pl=pl) for t in MULTI_TEMPLATES[:7]],
                              absent=[t.format(pl=pl) for t in ABSENT_PLURAL_ANSWERS], plural=pl))
    if missing_colours:
        c = rng.choice(missing_colours)
        out.append(_Candidate("colour", (), [f"the {c} shape", f"the shape that is {c}"], absent=_absent(f"{c} shape")))
    if not w.shape_count["circle"]:
        out.append(_Candidate("could_roll", (), ["the shape that could roll"],
                              ["Which shape could roll away?", "Which of these shapes could roll like a wheel?"],
                              absent=["None of these shapes could roll: there is no circle in the image.",
                                      "There is no shape that could roll here, because there is no circle."]))
    if not w.shape_count["heart"]:
        out.append(_Candidate("shape_clue", (), ["the shape you would draw on a valentine card"],
                              ["Which shape would you draw on a valentine card?"],
                              absent=["There is no heart in this image, so nothing here belongs on a valentine card.",
                                      "I don't see a heart, the shape you would draw on a valentine card."]))
    for c, (a, b) in MIXES.items():
        if not w.colour_count[c]:
            out.append(_Candidate("colour_mix", (), [f"the shape whose colour you get by mixing {a} and {b}"],
                                  [f"Which shape has the colour you get by mixing {a} and {b} paint?"],
                                  absent=[f"Mixing {a} and {b} gives {c}, and there is no {c} shape in this image.",
                                          f"There is no {c} shape here."]))
            break
    if pairs:
        c, s = rng.choice(pairs)
        ref = f"the {c} {s}"
        kind = rng.choice(list(_RELATIONS))
        _, phrases, sentences = _RELATIONS[kind]
        out.append(_Candidate("relation_missing_reference", (), [p.format(ref=ref) for p in phrases],
                              [x.format(ref=ref) for x in sentences], absent=_absent(f"{c} {s}")))
    return out


_BUILDERS = {
    "attribute": _attribute,
    "spatial": _spatial,
    "superlative": _superlative,
    "reasoning": _reasoning,
    "multi_target": _multi_target,
}


# ------------------------------------------------------------------------------------------------------- phrasing
def _pick_kind(cands: list[_Candidate], rng: random.Random) -> _Candidate:
    kinds = sorted({c.kind for c in cands})
    kind = rng.choice(kinds)
    return rng.choice([c for c in cands if c.kind == kind])


def _sentences(cand: _Candidate) -> list[str]:
    generic = [t.format(np=p) for t in SINGLE_TEMPLATES for p in cand.phrases] if cand.plural is None else []
    return cand.sentences + generic


def _phrase(cand: _Candidate, rng: random.Random, sentence_only: bool = False) -> tuple[str, bool, tuple[str, ...]]:
    """(text, is_sentence, alternatives): a bare noun phrase now and then, else a sentence (specific ones favoured)."""
    if not sentence_only and cand.phrases and rng.random() < PHRASE_PROBABILITY:
        pool, is_sentence = list(cand.phrases), False
    else:
        is_sentence = True
        specific, generic = cand.sentences, _sentences(cand)[len(cand.sentences):]
        pool = specific + generic
        if specific and generic and rng.random() < 0.5:
            pool = specific
    text = rng.choice(pool)
    others = [p for p in (cand.phrases if not is_sentence else _sentences(cand)) if p != text]
    alternatives = tuple(rng.sample(others, min(2, len(others))))
    return text, is_sentence, alternatives


def _answer(w: _World, cand: _Candidate, text: str, rng: random.Random) -> str:
    if cand.absent is not None:
        return rng.choice(cand.absent)
    if len(cand.targets) == 1 and cand.plural is None:
        name = w.name(cand.targets[0])
        return ground(rng.choice(SINGLE_ANSWERS).format(name=name, Name=cap(name)), w.scene, cand.targets)
    segs = seg_list(len(cand.targets))
    if text.startswith("How many"):
        template = MULTI_ANSWERS[-1]
    else:
        template = rng.choice(MULTI_ANSWERS)
    answer = template.format(segs=segs, Segs=cap(segs), count=number_word(len(cand.targets)), pl=cand.plural)
    return ground(answer, w.scene, cand.targets)


def _explanatory(w: _World, rng: random.Random, cands_by_family: dict[str, list[_Candidate]]) -> Query | None:
    pool = [c for fam in ("attribute", "spatial", "superlative", "reasoning") for c in cands_by_family[fam]
            if c.reason and len(c.targets) == 1]
    if not pool:
        return None
    cand = _pick_kind(pool, rng)
    base, _, _ = _phrase(cand, rng, sentence_only=True)

    def ask(sentence: str) -> str:
        imperative = sentence.endswith(".") and not sentence.startswith("I ")
        if imperative and rng.random() < 0.5:
            return sentence[:-1] + " and explain why."
        return sentence + rng.choice(EXPLAIN_QUESTION_SUFFIXES)

    text = ask(base)
    name = w.name(cand.targets[0])
    answer = rng.choice(EXPLAIN_ANSWERS).format(name=name, Name=cap(name), reason=cand.reason)
    answer = ground(answer, w.scene, cand.targets)
    others = [s for s in _sentences(cand) if s != base]
    alternatives = tuple(ask(s) for s in rng.sample(others, min(2, len(others))))
    return Query("explanatory", cand.kind, text, True, answer, cand.targets, alternatives, cand.reason)


def make_queries(scene: Scene, seed: int, families=None) -> list[Query]:
    """At most one query per family (in FAMILIES order), each from its own seeded stream so that asking for fewer
    families leaves the others' queries unchanged."""
    wanted = FAMILIES if families is None else tuple(f for f in FAMILIES if f in set(families))
    w = _World(scene)
    cands = {fam: builder(w) for fam, builder in _BUILDERS.items()}
    queries = []
    for fam in wanted:
        rng = random.Random(f"toy_world/{fam}/{seed}")
        if fam == "explanatory":
            q = _explanatory(w, rng, cands)
            if q is not None:
                queries.append(q)
            continue
        pool = _no_target(w, rng) if fam == "no_target" else cands[fam]
        if not pool:
            continue
        cand = _pick_kind(pool, rng)
        text, is_sentence, alternatives = _phrase(cand, rng)
        answer = _answer(w, cand, text, rng)
        queries.append(Query(fam, cand.kind, text, is_sentence, answer, cand.targets, alternatives))
    return queries


def check_query_kinds(kinds) -> set[str]:
    """``kinds`` (one name or several) as a set, each one of ``ALL_ONE_TARGET_KINDS``; else an InputError naming them."""
    wanted = {kinds} if isinstance(kinds, str) else set(kinds)
    unknown = sorted(wanted - ALL_ONE_TARGET_KINDS)
    if unknown:
        raise InputError(f"unknown query kinds {', '.join(map(repr, unknown))}; known one-target kinds: "
                         f"{', '.join(sorted(ALL_ONE_TARGET_KINDS))}")
    return wanted


def focus_queries(scene: Scene, seed: int, kinds) -> list[Query]:
    """One query for each of ``kinds`` the scene offers (one-target kinds of the attribute, spatial, superlative and
    reasoning families), phrased and answered as :func:`make_queries` would, from a seeded stream of its own.

    ``make_queries`` draws a family's kind evenly among the kinds its scene offers, so a kind that few scenes offer
    (the only shape of its colour: about one scene in four) is rarely asked; this asks it whenever it is there."""
    wanted = check_query_kinds(kinds)
    w = _World(scene)
    rng = random.Random(f"toy_world/focus/{seed}")
    queries = []
    for family in ONE_TARGET_KINDS:
        by_kind: dict[str, list[_Candidate]] = {}
        for cand in _BUILDERS[family](w):
            if cand.kind in wanted and len(cand.targets) == 1 and cand.plural is None:
                by_kind.setdefault(cand.kind, []).append(cand)
        for kind in sorted(by_kind):
            cand = rng.choice(by_kind[kind])
            text, is_sentence, alternatives = _phrase(cand, rng)
            queries.append(Query(family, kind, text, is_sentence, _answer(w, cand, text, rng), cand.targets,
                                 alternatives))
    return queries


def all_queries(scene: Scene, seed: int = 0) -> list[Query]:
    """Every valid query of the scene (not explanatory, which reuses these), each in its first noun phrase with a
    fixed answer: for exhaustive evaluation and for checking the generator. No-target ones are a seeded selection."""
    w = _World(scene)
    out = []
    for fam, builder in _BUILDERS.items():
        for cand in builder(w):
            out.append(_canonical(w, fam, cand))
    for cand in _no_target(w, random.Random(f"toy_world/no_target/{seed}")):
        out.append(_canonical(w, "no_target", cand))
    return out


def _canonical(w: _World, family: str, cand: _Candidate) -> Query:
    text = cand.phrases[0] if cand.phrases else cand.sentences[0]
    if cand.absent is not None:
        answer = cand.absent[0]
    elif cand.plural is None:
        answer = ground(f"{cap(w.name(cand.targets[0]))} is [SEG].", w.scene, cand.targets)
    else:
        answer = ground(f"Sure, they are {seg_list(len(cand.targets))}.", w.scene, cand.targets)
    return Query(family, cand.kind, text, not cand.phrases, answer, cand.targets, reason=cand.reason)


# ----------------------------------------------------------------------------------------- language-only pairs
def _count_answer(n: int, sg: str, pl: str) -> str:
    if n == 0:
        return f"There are no {pl}."
    if n == 1:
        return f"There is one {sg}."
    return f"There are {number_word(n)} {pl}."


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """The objects left to right, with size and colour, and the background kind."""
    w = _World(scene)
    order = w.left_to_right(range(w.n))
    words = [f"{article(o.size)} {o.describe(with_size=True)}" for o in (w.objs[i] for i in order)]
    bg = f"{article(scene.background.kind)} {scene.background.kind} background"
    if len(words) == 1:
        return f"A single {w.objs[0].describe(with_size=True)} on {bg}."
    style = rng.randrange(2) if rng is not None else 0
    if style == 0:
        return f"From left to right: {join_words(words)}, on {bg}."
    return f"There are {number_word(len(words))} shapes on {bg}: {join_words(words)}, from left to right."


def make_qa(scene: Scene, seed: int) -> list[QAPair]:
    """Questions and text answers about the scene (counts, colours, shapes, sizes, existence, positions, a caption)
    plus one piece of world knowledge the reasoning queries rely on."""
    rng = random.Random(f"toy_world/qa/{seed}")
    w = _World(scene)
    objs = w.objs
    out = [QAPair("How many shapes are there?", _count_answer(w.n, "shape", "shapes"), "count")]
    c = rng.choice(COLOUR_NAMES)
    out.append(QAPair(f"How many {c} shapes are there?", _count_answer(w.colour_count[c], f"{c} shape", f"{c} shapes"),
                      "count_colour"))
    s = rng.choice(SHAPES)
    out.append(QAPair(f"How many {plural(s)} are there?", _count_answer(w.shape_count[s], s, plural(s)), "count_shape"))
    unique_shapes = [o for o in objs if w.shape_count[o.shape] == 1]
    if unique_shapes:
        o = rng.choice(unique_shapes)
        out.append(QAPair(f"What colour is the {o.shape}?", f"The {o.shape} is {o.colour}.", "colour_of"))
        out.append(QAPair(f"How big is the {o.shape}?", f"The {o.shape} is {o.size}.", "size_of"))
    unique_colours = [o for o in objs if w.colour_count[o.colour] == 1]
    if unique_colours:
        o = rng.choice(unique_colours)
        out.append(QAPair(f"What shape is the {o.colour} one?", f"It is {article(o.shape)} {o.shape}.", "shape_of"))
    if rng.random() < 0.5 and w.pair_count:
        c, s = rng.choice(sorted(w.pair_count))
    else:
        c, s = rng.choice(COLOUR_NAMES), rng.choice(SHAPES)
    k = w.pair_count[(c, s)]
    if k == 0:
        answer = f"No, there is no {c} {s}."
    elif k == 1:
        answer = f"Yes, there is {article(c)} {c} {s}."
    else:
        answer = f"Yes, there are {number_word(k)} {c} {plural(s)}."
    out.append(QAPair(f"Is there {article(c)} {c} {s}?", answer, "exists"))
    if w.n >= 2:
        for kind, (axis, sign, _, sentences, _) in _EXTREMES.items():
            best = _extreme(w, list(range(w.n)), axis, sign)
            if best is not None:
                where = sentences[0].format(noun="shape")[len("Which shape is "):-1]
                out.append(QAPair(sentences[0].format(noun="shape"), f"{cap(w.name(best))} is {where}.", "position"))
                break
    out.append(QAPair(rng.choice(["Describe the image.", "What do you see in this picture?",
                                  "List the shapes from left to right."]), caption(scene, rng), "caption"))
    out.append(_knowledge(rng))
    return out


def _knowledge(rng: random.Random) -> QAPair:
    topic = rng.randrange(4)
    if topic == 0:
        s = rng.choice(SHAPES)
        n = CORNERS[s]
        answer = f"{cap(article(s))} {s} has {number_word(n)} corners."  # number_word(0) is "no"
        return QAPair(f"How many corners does {article(s)} {s} have?", answer, "knowledge")
    if topic == 1:
        c, (a, b) = rng.choice(list(MIXES.items()))
        return QAPair(f"What colour do you get by mixing {a} and {b}?", f"Mixing {a} and {b} gives {c}.", "knowledge")
    if topic == 2:
        return QAPair("Which shape can roll?", "A circle can roll, because it has no corners.", "knowledge")
    c = rng.choice(COLOUR_NAMES)
    thing = rng.choice(COLOUR_THINGS[c])
    return QAPair(f"What colour is {thing}?", f"{cap(thing)} is {c}.", "knowledge")
