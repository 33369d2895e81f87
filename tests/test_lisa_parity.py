"""Numeric parity with the original LISA implementation (../shared/fixtures/lisa_ref_tiny, made by LISA's code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reasonseg import Segmenter
from reasonseg.checkpoints.lisa import load_lisa_checkpoint

from .conftest import forward_over_ids


@pytest.fixture(scope="module")
def loaded(lisa_fixture):
    model, processor = load_lisa_checkpoint(lisa_fixture)
    return model, processor


@pytest.fixture(scope="module")
def image_a(lisa_fixture):
    return Image.open(lisa_fixture / "inputs" / "image_a.png").convert("RGB")


def test_tokenization_matches_transformers_4_31(loaded, lisa_fixture):
    _, processor = loaded
    table = json.loads((lisa_fixture / "expected" / "tokenization.json").read_text())
    assert processor.seg_token_id == table["special_ids"]["seg_token_idx"]
    for sample in table["samples"]:
        expected = sample.get("input_ids", sample.get("tokenizer_image_token"))
        assert processor.encode(sample["text"]) == expected, sample["text"]


def test_image_branches_match(loaded, lisa_fixture, image_a):
    _, processor = loaded
    expected = np.load(lisa_fixture / "expected" / "clip_pixel_values.npz")
    for name in ("image_a", "image_b"):
        image = Image.open(lisa_fixture / "inputs" / f"{name}.png").convert("RGB")
        pixels = processor.preprocess_image(image).pixel_values.numpy()
        np.testing.assert_allclose(pixels, expected[name], atol=1e-6, rtol=0)
    resized = processor.sam_transform.resize(image_a)
    reference = np.asarray(Image.open(lisa_fixture / "expected" / "image_a_sam_resized.png"))
    assert resized.shape == (771, 1024, 3)
    assert np.array_equal(resized, reference)


def test_sam_image_embeddings(loaded, lisa_fixture, image_a):
    model, processor = loaded
    inputs = processor.preprocess_image(image_a)
    with torch.no_grad():
        embedding = model.encode_sam_images(inputs.sam_pixel_values).numpy()
    reference = np.load(lisa_fixture / "expected" / "image_a_sam_image_embeddings.npz")
    np.testing.assert_allclose(embedding, reference[list(reference.keys())[0]], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case_index", [0, 1])
def test_forced_seg_cases(loaded, lisa_fixture, image_a, case_index):
    model, processor = loaded
    case = json.loads((lisa_fixture / "expected" / "forced.json").read_text())[case_index]
    expected = np.load(lisa_fixture / "expected" / f"{case['name']}.npz")
    ids = processor.encode(processor.conversation_prompt([(case["prompt"], case["answer"])]))
    assert ids == expected["input_ids"][0].tolist()
    out, _, inputs = forward_over_ids(model, processor, image_a, ids, return_logits=True)
    assert list(inputs.resized_size) == case["resize"] and list(inputs.original_size) == case["original_size"]
    np.testing.assert_allclose(out.seg_hidden_states.numpy(), expected["seg_hidden_states"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.seg_embeddings.numpy(), expected["pred_embeddings"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.low_res_masks[0].numpy(), expected["low_res_masks"][:, 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.iou_predictions[0].numpy(), expected["iou_predictions"][:, 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.pred_masks[0].numpy(), expected["pred_masks"], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def segmenter(lisa_fixture):
    return Segmenter.from_pretrained(str(lisa_fixture), precision="fp32", device="cpu")


@pytest.mark.parametrize("case_index", [0, 1])
def test_chat_path(segmenter, lisa_fixture, case_index):
    case = json.loads((lisa_fixture / "expected" / "chat.json").read_text())[case_index]
    prediction = segmenter.predict(str(lisa_fixture / "inputs" / "image_a.png"), case["prompt"], max_new_tokens=32)
    assert prediction.token_ids == case["new_token_ids"]
    printed_answer = case["printed_text_output"].split("ASSISTANT:", 1)[1].strip()
    assert prediction.text == printed_answer
    assert len(prediction.masks) == len(case["seg_indices_in_output_ids"])
    if case_index == 0:
        expected = np.load(lisa_fixture / "expected" / "chat_p1.npz")
        logits = np.stack(prediction.mask_logits)
        assert logits.shape == (4, 226, 300)
        np.testing.assert_allclose(logits, expected["pred_masks"], atol=1e-5, rtol=0)
        confident = np.abs(expected["pred_masks"]) > 1e-4
        assert np.array_equal(np.stack(prediction.masks)[confident], (expected["pred_masks"] > 0)[confident])


def test_chat_seg_hidden_states_and_prompts(segmenter, lisa_fixture):
    """The KV-cached decoder's [SEG] states equal the reference's full recomputation."""
    case = json.loads((lisa_fixture / "expected" / "chat.json").read_text())[0]
    expected = np.load(lisa_fixture / "expected" / "chat_p1.npz")
    model = segmenter.model
    session = segmenter.chat(str(lisa_fixture / "inputs" / "image_a.png"))
    captured = {}
    original = model.seg_projection.forward

    def spy(hidden):
        captured["hidden"] = hidden.detach().clone()
        captured["prompts"] = original(hidden).detach().clone()
        return captured["prompts"]

    model.seg_projection.forward = spy
    try:
        session.ask(case["prompt"], max_new_tokens=32)
    finally:
        model.seg_projection.forward = original
    np.testing.assert_allclose(captured["hidden"].numpy(), expected["seg_hidden_states"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(captured["prompts"].numpy(), expected["pred_embeddings"], atol=1e-5, rtol=0)


def test_convert_to_native_gives_identical_outputs(lisa_fixture, segmenter, tmp_path, capsys):
    from reasonseg.cli.main import main

    out = tmp_path / "native"
    assert main(["convert", "--from-lisa", str(lisa_fixture), "--out", str(out), "--precision", "fp32"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "reasonseg_processor.json").is_file()
    native = Segmenter.from_pretrained(str(out), device="cpu")
    image = str(lisa_fixture / "inputs" / "image_a.png")
    prompt = json.loads((lisa_fixture / "expected" / "chat.json").read_text())[0]["prompt"]
    a, b = segmenter.predict(image, prompt, max_new_tokens=32), native.predict(image, prompt, max_new_tokens=32)
    assert a.token_ids == b.token_ids and a.text == b.text
    # same weights and kernels; measured difference 3e-8 (summation order), far inside the 1e-5 parity bound
    np.testing.assert_allclose(np.stack(a.mask_logits), np.stack(b.mask_logits), atol=1e-6, rtol=0)
    # converting again into a non-empty directory is refused, never overwritten
    assert main(["convert", "--from-lisa", str(lisa_fixture), "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err


def test_missing_vision_tower_names_what_it_tried(lisa_fixture):
    from reasonseg.errors import CheckpointError

    with pytest.raises(CheckpointError, match="--vision-tower") as info:
        load_lisa_checkpoint(lisa_fixture, vision_tower="no_such_tower_dir")
    assert "no_such_tower_dir" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_run_with_sam_decoder_in_fp32(lisa_fixture, precision):
    import torch

    segmenter = Segmenter.from_pretrained(str(lisa_fixture), precision=precision, device="cpu")
    model = segmenter.model
    assert model.language_model.lm_head.weight.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert model.sam.mask_decoder.iou_token.weight.dtype == torch.float32
    case = json.loads((lisa_fixture / "expected" / "forced.json").read_text())[0]
    expected = np.load(lisa_fixture / "expected" / "forced_seg1.npz")["pred_masks"]
    processor = segmenter.processor
    image = Image.open(lisa_fixture / "inputs" / "image_a.png").convert("RGB")
    ids = processor.encode(processor.conversation_prompt([(case["prompt"], case["answer"])]))
    out, _, _ = forward_over_ids(model, processor, image, ids)
    logits = out.pred_masks[0].float().numpy()
    # measured: max |diff| 2.0e-3 (bf16) and 6.7e-5 (fp16) on logits of scale 0.3; correlation 0.99998+
    assert np.abs(logits - expected).max() < 2e-2
    assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.99


def test_sam_shape_is_inferred_from_the_tensors(loaded, lisa_fixture):
    model, _ = loaded
    meta = json.loads((lisa_fixture / "fixture_meta.json").read_text())["sam_image_encoder"]
    vision = model.config.sam_config.vision_config
    assert vision.hidden_size == meta["encoder_embed_dim"] and vision.num_hidden_layers == meta["encoder_depth"]
    assert vision.num_attention_heads == meta["encoder_num_heads"]
    assert list(vision.global_attn_indexes) == meta["encoder_global_attn_indexes"]
    assert vision.window_size == meta["window_size"] and vision.patch_size == meta["patch_size"]


def test_quantised_lisa_checkpoint_loads_through_a_converted_cache(lisa_fixture, tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("HOME", str(tmp_path))
    segmenter = Segmenter.from_pretrained(str(lisa_fixture), device="cpu", load_in_8bit=True)
    assert any((tmp_path / ".cache" / "reasonseg" / "converted").iterdir())
    prompt = json.loads((lisa_fixture / "expected" / "chat.json").read_text())[0]["prompt"]
    prediction = segmenter.predict(str(lisa_fixture / "inputs" / "image_a.png"), prompt, 4, force_seg=True)
    assert len(prediction.masks) >= 1 and prediction.masks[0].shape == (226, 300)


def test_sharded_bin_checkpoint_as_transformers_4_31_saved_it(lisa_fixture, tmp_path, segmenter):
    """Released LISA models are sharded pytorch_model-*.bin pickles with an index; they load the same."""
    import shutil

    from safetensors.torch import load_file

    target = tmp_path / "lisa_bin"
    shutil.copytree(lisa_fixture, target, ignore=shutil.ignore_patterns("expected", "inputs"))
    (target / "model.safetensors").unlink()
    tensors = load_file(str(lisa_fixture / "model.safetensors"))
    keys = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    weight_map = {}
    for name, shard_keys in shards.items():
        torch.save({k: tensors[k] for k in shard_keys}, target / name)
        weight_map.update({k: name for k in shard_keys})
    (target / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    from_bin = Segmenter.from_pretrained(str(target), device="cpu")
    image = str(lisa_fixture / "inputs" / "image_a.png")
    prompt = json.loads((lisa_fixture / "expected" / "chat.json").read_text())[0]["prompt"]
    a, b = segmenter.predict(image, prompt, max_new_tokens=32), from_bin.predict(image, prompt, max_new_tokens=32)
    assert a.token_ids == b.token_ids
    np.testing.assert_allclose(np.stack(a.mask_logits), np.stack(b.mask_logits), atol=1e-6, rtol=0)


def test_pickle_with_code_is_refused(tmp_path):
    import collections

    from reasonseg.checkpoints.state_dicts import load_tensor_file
    from reasonseg.errors import CheckpointError

    path = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(2), "callback": collections.Counter("abc")}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle|state dict of tensors"):
        load_tensor_file(path)
