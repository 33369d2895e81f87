"""predict_batch equals predict one pair at a time: images batched, prompts sharing an image, force_seg."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reasonseg import Segmenter
from reasonseg.errors import InputError
from reasonseg.modeling.tiny import build_tiny_model


def _images():
    rng = np.random.RandomState(1)
    sizes = [(60, 80), (90, 40), (64, 64), (33, 120), (50, 50)]
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)) for h, w in sizes]


def test_batch_of_several_equals_batch_of_one(tiny):
    model, processor = tiny
    segmenter = Segmenter(model, processor)
    seg = processor.seg_token_id
    # make [SEG] likely so masks are compared too: bias the lm_head row of [SEG]
    model.language_model.lm_head.weight.data[seg] += 0.5 * model.language_model.lm_head.weight.data[seg].sign()
    images = _images()
    prompts = ["the circle", "which shape could roll away?", "the red one", "all of them", "the square"]
    singles = [segmenter.predict(img, p, max_new_tokens=12) for img, p in zip(images, prompts)]
    batched = segmenter.predict_batch(images, prompts, batch_size=4, max_new_tokens=12)
    assert sum(len(p.masks) for p in singles) > 0
    for single, batch in zip(singles, batched):
        assert batch.token_ids == single.token_ids and batch.text == single.text
        assert len(batch.masks) == len(single.masks)
        for a, b in zip(batch.mask_logits, single.mask_logits):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _flatten(results):
    return [p for r in results for p in (r if isinstance(r, list) else [r])]


def _assert_same(a, b):
    """Same tokens, text, forced flag and masks; logits equal to float rounding (pixels within 1e-6 of 0 may
    land either side of the threshold)."""
    assert a.token_ids == b.token_ids and a.text == b.text and a.seg_forced == b.seg_forced
    assert len(a.masks) == len(b.masks)
    for la, lb, ma, mb in zip(a.mask_logits, b.mask_logits, a.masks, b.masks):
        np.testing.assert_allclose(la, lb, atol=1e-6, rtol=0)
        assert np.all((ma == mb) | (np.abs(la) < 1e-6))
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["before", "at"])
def test_prompt_lists_and_force_seg_batch_1_vs_8_vs_predict(position):
    """Several prompts per image (encodings shared), per-image force_seg, rows that stop early beside rows that run
    to max_new_tokens, and [SEG]s fed once more ("at"): all as one pair at a time."""
    model, processor = build_tiny_model(seed=0, seg_hidden_position=position)
    weight = model.language_model.lm_head.weight.data
    weight[processor.eos_token_id] += 0.15 * weight[processor.eos_token_id].sign()  # some rows end early
    segmenter = Segmenter(model, processor)
    images = [_images()[i] for i in (0, 3, 2)]
    prompts = [["the circle", "which shape could roll away?"], "the square", ["all of them", "a", "bb"]]
    force = [True, False, True]
    pairs = [(i, p) for i, entry in enumerate(prompts) for p in (entry if isinstance(entry, list) else [entry])]
    singles = [segmenter.predict(images[i], p, max_new_tokens=6, force_seg=force[i]) for i, p in pairs]
    lengths = {len(p.token_ids) for p in singles}
    assert len(lengths) > 1 and any(p.seg_forced for p in singles)  # the mix this test is about
    for batch_size in (1, 8):
        results = segmenter.predict_batch(images, prompts, batch_size=batch_size, max_new_tokens=6, force_seg=force)
        assert [isinstance(r, list) for r in results] == [isinstance(e, list) for e in prompts]
        assert [len(r) for r in results if isinstance(r, list)] == [2, 3]
        for single, batched in zip(singles, _flatten(results)):
            _assert_same(single, batched)


def test_seg_ending_the_answer_is_fed_once_more_in_a_batch():
    """ "at" convention with answers cut by max_new_tokens right after a [SEG]: the extra step runs batched."""
    model, processor = build_tiny_model(seed=0, seg_hidden_position="at")
    weight = model.language_model.lm_head.weight.data
    weight[processor.seg_token_id] += 0.5 * weight[processor.seg_token_id].sign()
    segmenter = Segmenter(model, processor)
    images = _images()[:2]
    singles = [segmenter.predict(image, "the circle", max_new_tokens=3) for image in images]
    assert all(p.token_ids[-1] == processor.seg_token_id for p in singles)
    for single, batched in zip(singles, segmenter.predict_batch(images, "the circle", batch_size=8, max_new_tokens=3)):
        _assert_same(single, batched)


def test_predict_batch_bad_arguments_are_input_errors(tiny):
    segmenter = Segmenter(*tiny)
    images = _images()[:2]
    for call, message in [
        (lambda: segmenter.predict_batch(images, ["a"]), "2 images but 1 prompts"),
        (lambda: segmenter.predict_batch(images, [[], "a"]), "empty list of prompts"),
        (lambda: segmenter.predict_batch(images, ["a", ["b", " "]]), "is empty"),
        (lambda: segmenter.predict_batch(images, "a", batch_size=0), "batch_size must be"),
        (lambda: segmenter.predict_batch(images, "a", force_seg=[True]), "one True/False per image"),
        (lambda: segmenter.predict_batch(["missing.png", images[0]], "a"), "not found"),
    ]:
        with pytest.raises(InputError, match=message):
            call()
