"""precision=auto: bf16 autocast only where bf16 is native; an explicit bf16 where it is not runs, with a warning."""

from __future__ import annotations

import warnings

import pytest

from reasonseg.errors import InputError
from reasonseg.training import precision as precision_module
from reasonseg.training.config import load_training_config
from reasonseg.training.precision import accelerate_mixed_precision, resolve_precision
from reasonseg.training.sam_pretrain import load_sam_pretrain_config
from reasonseg.training.vlm_pretrain import load_vlm_pretrain_config


@pytest.fixture(params=[True, False], ids=["native", "not_native"])
def native(request, monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda: request.param)
    return request.param


def test_auto_is_bf16_only_where_native(native):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("auto") == ("bf16" if native else "fp32")
        assert accelerate_mixed_precision("auto") == ("bf16" if native else "no")
        assert resolve_precision("fp32") == "fp32" and accelerate_mixed_precision("fp16") == "fp16"


def test_explicit_bf16_is_kept_and_warns_only_where_not_native(native):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert accelerate_mixed_precision("bf16") == "bf16"
    messages = [str(w.message) for w in caught]
    if native:
        assert messages == []
    else:
        assert len(messages) == 1 and "pass precision=fp32 or precision=auto" in messages[0]


def test_every_stage_config_takes_auto_and_names_the_choices_for_a_bad_value():
    assert load_training_config(None, ["model=x", "datasets=[{kind: custom, path: x}]", "precision=auto"]).precision \
        == "auto"
    with pytest.raises(InputError, match=r"training config precision: 'fp8'; use auto, fp32, bf16 or fp16"):
        load_training_config(None, ["model=x", "datasets=[{kind: custom, path: x}]", "precision=fp8"])
    assert load_sam_pretrain_config(None, ["precision=auto"]).precision == "auto"
    with pytest.raises(InputError, match=r"toy SAM config precision: 'fp16'; use auto, fp32 or bf16"):
        load_sam_pretrain_config(None, ["precision=fp16"])
    assert load_vlm_pretrain_config(None, ["precision=auto"]).precision == "auto"
    with pytest.raises(InputError, match=r"toy LLaVA config precision: 'half'; use auto, fp32 or bf16"):
        load_vlm_pretrain_config(None, ["precision=half"])
