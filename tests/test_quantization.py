"""8-bit and 4-bit (nf4) loading through bitsandbytes on CPU, with SAM and the [SEG] path kept in full precision."""

from __future__ import annotations

import numpy as np
import pytest

from reasonseg import Segmenter

pytest.importorskip("bitsandbytes")

PROMPT = "What is the red circle in this image?"


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from reasonseg.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    directory = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def test_bitsandbytes_optional_hub_kernel_warning_is_quiet():
    """bitsandbytes' CPU backend warns on import when it cannot fetch an optional kernel from the hub (always, offline);
    its fallback works, so reasonseg quiets that one logger and nothing else of bitsandbytes."""
    import logging
    import subprocess
    import sys

    import reasonseg  # noqa: F401

    assert logging.getLogger("bitsandbytes.backends.cpu.ops").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("bitsandbytes").getEffectiveLevel() == logging.WARNING
    run = subprocess.run([sys.executable, "-c", "import reasonseg, bitsandbytes"], capture_output=True, text=True, check=True)
    assert "gemm_4bit_forward" not in run.stderr + run.stdout


# measured on this tiny model: correlation of mask logits with fp32 0.9999+ (8-bit), 0.99+ (nf4)
@pytest.mark.parametrize("flag, min_correlation", [("load_in_8bit", 0.999), ("load_in_4bit", 0.95)])
def test_quantised_model_gives_masks_close_to_fp32(saved_tiny, rgb_image, flag, min_correlation):
    import bitsandbytes as bnb

    reference = Segmenter.from_pretrained(saved_tiny, device="cpu").predict(rgb_image, PROMPT, 6, force_seg=True)
    quantised = Segmenter.from_pretrained(saved_tiny, device="cpu", **{flag: True})
    q_proj = quantised.model.language_model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear8bitLt if flag == "load_in_8bit" else bnb.nn.Linear4bit)
    # parts that LISA keeps out of quantisation stay plain
    for module in (quantised.model.sam, quantised.model.seg_projection, quantised.model.vision_tower,
                   quantised.model.multi_modal_projector):
        assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in module.modules())
    prediction = quantised.predict(rgb_image, PROMPT, 6, force_seg=True)
    assert len(prediction.masks) == 1 and prediction.masks[0].shape == reference.masks[0].shape
    correlation = np.corrcoef(prediction.mask_logits[0].ravel(), reference.mask_logits[0].ravel())[0, 1]
    assert correlation > min_correlation


def test_both_bit_widths_at_once_is_refused(saved_tiny):
    from reasonseg.errors import InputError

    with pytest.raises(InputError, match="choose one"):
        Segmenter.from_pretrained(saved_tiny, device="cpu", load_in_8bit=True, load_in_4bit=True)
