"""predict_batch equals predict one pair at a time."""

from __future__ import annotations

import numpy as np
from PIL import Image

from reasonseg import Segmenter


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
