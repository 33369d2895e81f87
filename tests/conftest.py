"""Shared fixtures: tiny seeded models built from configs, and the LISA reference fixture."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
LISA_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "lisa_ref_tiny"


@pytest.fixture(scope="session")
def lisa_fixture() -> Path:
    if not LISA_FIXTURE.is_dir():
        pytest.skip(f"LISA reference fixture not found at {LISA_FIXTURE} (it ships beside the repo, not in it)")
    return LISA_FIXTURE


@pytest.fixture()
def tiny():
    from reasonseg.modeling.tiny import build_tiny_model

    return build_tiny_model(seed=0)


@pytest.fixture()
def rgb_image() -> Image.Image:
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(60, 80, 3) * 255).astype(np.uint8))


class ScriptedHead(nn.Module):
    """An lm_head that answers a fixed token script (then EOS): a tiny model whose answers are known."""

    def __init__(self, script: list[int], vocab_size: int, eos_id: int):
        super().__init__()
        self.script, self.vocab_size, self.eos_id, self.calls = script, vocab_size, eos_id, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        token = self.script[self.calls] if self.calls < len(self.script) else self.eos_id
        self.calls += 1
        logits = torch.zeros(*hidden.shape[:-1], self.vocab_size)
        logits[..., token] = 1.0
        return logits + 0 * hidden.sum(-1, keepdim=True)


def script_answers(model, processor, script: list[int]) -> ScriptedHead:
    head = ScriptedHead(script, model.config.text_config.vocab_size, processor.eos_token_id)
    model.set_output_embeddings(head)
    return head


@contextmanager
def counted_image_and_decoder_calls(model):
    """Counts the vision tower's and SAM's image-encoder calls and records the sequence length of every decoder call
    while the block runs (``{"vision", "sam", "decoder_lengths"}``); the original forwards come back after."""
    calls = {"vision": 0, "sam": 0, "decoder_lengths": []}
    modules = {"vision": model.vision_tower, "sam": model.sam.vision_encoder, "decoder": model.decoder}
    originals = {name: module.forward for name, module in modules.items()}

    def counting(name):
        def forward(*args, **kwargs):
            if name == "decoder":
                calls["decoder_lengths"].append(kwargs["inputs_embeds"].shape[1])
            else:
                calls[name] += 1
            return originals[name](*args, **kwargs)

        return forward

    for name, module in modules.items():
        module.forward = counting(name)
    try:
        yield calls
    finally:
        for name, module in modules.items():
            module.forward = originals[name]


def counted_two_turn_chat(model, processor, image, first_question: str, second_question: str, max_new_tokens: int):
    """Two questions in one chat session about ``image`` while :func:`counted_image_and_decoder_calls` counts;
    returns both predictions, the counts, and how many decoder calls the first turn made."""
    from reasonseg import Segmenter

    with counted_image_and_decoder_calls(model) as calls:
        session = Segmenter(model, processor).chat(image)
        first = session.ask(first_question, max_new_tokens=max_new_tokens)
        first_turn_calls = len(calls["decoder_lengths"])
        second = session.ask(second_question, max_new_tokens=max_new_tokens)
    return first, second, calls, first_turn_calls


def forward_over_ids(model, processor, image, ids: list[int], return_logits: bool = False):
    """One full forward (as in training, no cache) over the token ids of a conversation about ``image``; returns
    (output, ids tensor, preprocessed inputs)."""
    inputs = processor.preprocess_image(image)
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        out = model(
            input_ids=ids_t,
            attention_mask=torch.ones_like(ids_t),
            pixel_values=inputs.pixel_values,
            sam_pixel_values=inputs.sam_pixel_values,
            resized_sizes=[inputs.resized_size],
            original_sizes=[inputs.original_size],
            return_logits=return_logits,
        )
    return out, ids_t, inputs


def teacher_forced_forward(model, processor, image, prompt: str, answer_ids: list[int]):
    """The full forward over ``prompt`` plus an answer's tokens; returns (output, ids, inputs)."""
    prompt_ids = processor.encode(processor.conversation_prompt([(prompt, None)]))
    return forward_over_ids(model, processor, image, prompt_ids + answer_ids)
