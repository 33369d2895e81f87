"""Question and answer phrasings used to turn segmentation annotations into conversations (LISA's sets)."""

from __future__ import annotations

import random

SHORT_QUESTIONS = [
    "Can you segment the {target} in this image?",
    "Please segment the {target} in this image.",
    "What is {target} in this image? Please respond with segmentation mask.",
    "What is {target} in this image? Please output segmentation mask.",
]
SENTENCE_QUESTIONS = [
    "{target} Please respond with segmentation mask.",
    "{target} Please output segmentation mask.",
]
EXPLANATORY_SUFFIX = " Please output segmentation mask and explain why."
ANSWERS = [
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
]


def question_for(target: str, is_sentence: bool, rng: random.Random) -> str:
    """A randomly phrased question about ``target`` (a phrase, or a whole sentence when ``is_sentence``)."""
    templates = SENTENCE_QUESTIONS if is_sentence else SHORT_QUESTIONS
    return rng.choice(templates).format(target=target.strip())


def answer_for(num_masks: int, rng: random.Random) -> str:
    """An answer with ``num_masks`` [SEG] tokens."""
    if num_masks == 1:
        return rng.choice(ANSWERS)
    segs = ", ".join(["[SEG]"] * (num_masks - 1)) + " and [SEG]"
    return f"Sure, they are {segs}."
