"""Big-model placement: the language model is spread by accelerate over the memory it is given (here CPU + disk
offload, the split this CPU-only machine supports); SAM and the [SEG] projection stay whole on the first device."""

from __future__ import annotations

import numpy as np

from reasonseg import Segmenter
from reasonseg.checkpoints.loading import PINNED_PARTS


def test_device_map_auto_with_max_memory_splits_and_matches(tmp_path, tiny, rgb_image, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # offload folder under a throwaway home
    model, processor = tiny
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    reference = Segmenter(model, processor).predict(rgb_image, "the circle", 6, force_seg=True)

    pinned = sum(p.numel() for name in PINNED_PARTS for p in getattr(model, name).parameters()) * 4
    language = sum(p.numel() for p in model.language_model.parameters()) * 4
    budget = {"cpu": pinned + language * 3 // 4}
    dispatched = Segmenter.from_pretrained(str(tmp_path / "m"), device_map="auto", max_memory=budget)
    placement = dispatched.model.hf_device_map
    assert all(placement[name] == "cpu" for name in PINNED_PARTS)
    language_devices = {v for k, v in placement.items() if k.startswith("language_model")}
    assert language_devices == {"cpu", "disk"}
    prediction = dispatched.predict(rgb_image, "the circle", 6, force_seg=True)
    assert prediction.token_ids == reference.token_ids
    np.testing.assert_allclose(prediction.mask_logits[0], reference.mask_logits[0], atol=1e-6, rtol=0)
