"""Sa2VA's Qwen-VL variants (``Sa2VAChatModelQwen``) on tiny config-built Qwen2.5-VL and Qwen3-VL Sa2VAs (every check
runs on both): round trips, cached decoding with M-RoPE, several [SEG]s in one decoder call, chat reuse, the
Segmenter API, recognition and errors; for Qwen3-VL, the prefill equals transformers' own model forward (deepstack).

Parity with the authors' code is NOT covered (the reference fixture covers only the InternVL family)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reasonseg import Segmenter
from reasonseg.checkpoints.convert import save_native
from reasonseg.errors import UnsupportedError
from reasonseg.inference.generation import greedy_decode
from reasonseg.modeling.sa2va.tiny import tiny_sam2_hints
from reasonseg.modeling.sa2va.tiny_qwen import build_tiny_sa2va_qwen

from .conftest import counted_two_turn_chat, forward_over_ids, script_answers, teacher_forced_forward

PROMPT = "the vessel"


FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(params=FAMILIES)
def tiny_qwen(request):
    return build_tiny_sa2va_qwen(seed=0, family=request.param)


@pytest.fixture()
def image() -> Image.Image:
    rng = np.random.RandomState(1)
    return Image.fromarray((rng.rand(40, 56, 3) * 255).astype(np.uint8))


@pytest.fixture()
def tall_image() -> Image.Image:
    rng = np.random.RandomState(2)
    return Image.fromarray((rng.rand(72, 32, 3) * 255).astype(np.uint8))


def test_prompt_image_grid_and_positions(tiny_qwen, image):
    model, processor = tiny_qwen
    inputs = processor.preprocess_image(image)
    assert tuple(inputs.pixel_values.shape) == (1, 1, 10, 14, 3 * 2 * 4 * 4)  # 40x56 px, 4-px patches, 2 frames
    assert processor.image_token_count(inputs.pixel_values) == 35  # 5 x 7 merged tokens
    text = processor.conversation_prompt([("<image>" + PROMPT, None)])
    system = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              if model.config.vlm_config.model_type == "qwen2_5_vl" else "")  # Qwen3-VL's template: no system turn
    assert text == (system + "<|im_start|>user\n"
                    "<|vision_start|><image><|vision_end|>the vessel<|im_end|>\n<|im_start|>assistant\n")
    ids = processor.encode(text)
    assert ids.count(-200) == 1
    features = model.encode_images(inputs.pixel_values)
    assert features.embeddings[0].shape == (35, 64) and features.grids.tolist() == [[1, 10, 14]]
    t = torch.tensor([ids])
    spliced = model.splice_inputs(t, torch.ones_like(t), features, [0])
    slot = ids.index(-200)
    positions = spliced.position_ids[:, 0]
    assert positions.shape == (3, len(ids) - 1 + 35)
    image_positions = positions[:, slot : slot + 35]
    assert image_positions[0].tolist() == [slot] * 35  # temporal
    assert image_positions[1].tolist() == [slot + r for r in range(5) for _ in range(7)]  # rows
    assert image_positions[2].tolist() == [slot + c for _ in range(5) for c in range(7)]  # columns
    after = positions[:, slot + 35 :]
    assert after[:, 0].tolist() == [slot + 7] * 3  # text continues after the largest image position
    # the same positions as the Qwen-VL model computes from its own spelled-out ids
    expanded = torch.tensor([processor.expand_image_ids(ids, 35)])
    types = (expanded == model.config.vlm_config.image_token_id).long()
    own, _ = model.vlm.model.get_rope_index(expanded, mm_token_type_ids=types, image_grid_thw=features.grids)
    assert torch.equal(own, spliced.position_ids)


def test_cached_decoding_equals_teacher_forced_argmax(tiny_qwen, image):
    model, processor = tiny_qwen
    prediction = Segmenter(model, processor).predict(image, PROMPT, max_new_tokens=10)
    assert len(prediction.token_ids) >= 2
    inputs = processor.preprocess_image(image)
    prompt_ids = processor.encode(processor.conversation_prompt([(PROMPT, None)]))
    ids = torch.tensor([prompt_ids + prediction.token_ids[:-1]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs.pixel_values)
    first = len(prompt_ids) - 1 + 35 - 1  # the position predicting the first answer token
    argmax = out.logits[0, first:].argmax(-1).tolist()
    assert argmax == prediction.token_ids
    # and the uncached loop (recomputing everything each step) gives the same ids
    features = model.encode_images(inputs.pixel_values)
    t = torch.tensor([prompt_ids])
    spliced = model.splice_inputs(t, torch.ones_like(t), features, [0], padding_side="left")
    args = (model.decoder, model.get_output_embeddings(), model.get_input_embeddings(), spliced.inputs_embeds,
            spliced.attention_mask, spliced.position_ids, 10, processor.stop_token_ids)
    extra = spliced.decoder_kwargs  # Qwen3-VL's deepstack inputs (None for Qwen2.5-VL)
    cached = greedy_decode(*args, prefill_kwargs=extra)
    uncached = greedy_decode(*args, use_cache=False, prefill_kwargs=extra)
    assert cached.new_ids == uncached.new_ids == [prediction.token_ids]
    assert cached.next_positions.shape == (3, 1)
    torch.testing.assert_close(cached.step_states[0], uncached.step_states[0], atol=1e-5, rtol=0)


def test_several_seg_masks_equal_one_at_a_time(tiny_qwen, image):
    model, processor = tiny_qwen
    seg = processor.seg_token_id
    answer = processor.tokenizer.encode("Sure, ", add_special_tokens=False) + [seg, 40, seg, 41, seg, processor.eos_token_id]
    out, _, inputs = teacher_forced_forward(model, processor, image, PROMPT, answer)
    masks, states = out.pred_masks[0], out.seg_hidden_states
    assert masks.shape == (3, 40, 56) and states.shape == (3, 64)
    with torch.no_grad():
        sam = model.encode_sam_images(inputs.sam_pixel_values)
        for i in range(3):
            alone, _, _, _ = model.masks_from_seg_hidden(states[i : i + 1], sam, inputs.resized_size, inputs.original_size)
            torch.testing.assert_close(alone[0], masks[i], atol=1e-5, rtol=0)
    assert not torch.allclose(masks[0], masks[1])  # different [SEG] states give different masks


def test_segmenter_predict_and_forced_seg(tiny_qwen, image):
    model, processor = tiny_qwen
    segmenter = Segmenter(model, processor)
    seg, eos = processor.seg_token_id, processor.eos_token_id
    script_answers(model, processor, [45, seg, 46, eos])
    prediction = segmenter.predict(image, PROMPT, max_new_tokens=8)
    assert prediction.token_ids == [45, seg, 46, eos] and prediction.num_masks == 1
    assert prediction.masks[0].shape == (40, 56) and prediction.masks[0].dtype == bool
    # the mask is the one a teacher-forced pass gives the state AT the [SEG]
    out, _, _ = teacher_forced_forward(model, processor, image, PROMPT, prediction.token_ids)
    np.testing.assert_allclose(out.pred_masks[0][0].numpy(), prediction.mask_logits[0], atol=1e-5, rtol=0)

    script_answers(model, processor, [45, 46, eos])
    forced = segmenter.predict(image, PROMPT, max_new_tokens=8, force_seg=True)
    assert forced.seg_forced and forced.token_ids == [45, 46, seg] and forced.masks[0].shape == (40, 56)


def test_stops_at_endoftext_too(tiny_qwen, image):
    model, processor = tiny_qwen
    endoftext = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert processor.stop_token_ids == {processor.eos_token_id, endoftext}
    script_answers(model, processor, [45, endoftext, 46, 47])
    assert Segmenter(model, processor).predict(image, PROMPT, max_new_tokens=8).token_ids == [45, endoftext]


def test_chat_reuses_image_features_and_cache(tiny_qwen, image):
    model, processor = tiny_qwen
    seg, eos = processor.seg_token_id, processor.eos_token_id
    script_answers(model, processor, [45, seg, 48, eos, 47, seg, 49, eos])
    first, second, calls, before = counted_two_turn_chat(model, processor, image, PROMPT, "And the other one?", 6)
    assert calls["vision"] == 1 and calls["sam"] == 1
    assert calls["decoder_lengths"][before] == len([eos] + processor.continuation_ids("And the other one?"))
    # both masks equal a teacher-forced pass over the whole conversation, without any cache
    ids = (processor.encode(processor.conversation_prompt([(PROMPT, None)])) + first.token_ids
           + processor.continuation_ids("And the other one?") + second.token_ids)
    out, _, _ = forward_over_ids(model, processor, image, ids)
    np.testing.assert_allclose(out.pred_masks[0][0].numpy(), first.mask_logits[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.pred_masks[0][1].numpy(), second.mask_logits[0], atol=1e-5, rtol=0)


def test_predict_batch_of_different_sizes_equals_one_at_a_time(tiny_qwen, image, tall_image):
    model, processor = tiny_qwen
    segmenter = Segmenter(model, processor)
    prompts = [[PROMPT, "Segment the blue circle and the green square."], "What color is the background?"]
    batched = segmenter.predict_batch([image, tall_image], prompts, max_new_tokens=6, force_seg=True)
    singles = [[segmenter.predict(image, p, max_new_tokens=6, force_seg=True) for p in prompts[0]],
               segmenter.predict(tall_image, prompts[1], max_new_tokens=6, force_seg=True)]
    for got, want in zip(batched[0] + [batched[1]], singles[0] + [singles[1]]):
        assert got.token_ids == want.token_ids
        np.testing.assert_allclose(got.mask_logits[0], want.mask_logits[0], atol=1e-4, rtol=0)
    assert batched[1].masks[0].shape == (72, 32)


def _assert_same_outputs(a: Segmenter, b: Segmenter, image):
    pa = a.predict(image, PROMPT, max_new_tokens=6, force_seg=True)
    pb = b.predict(image, PROMPT, max_new_tokens=6, force_seg=True)
    assert pa.token_ids == pb.token_ids
    # equal to float rounding (measured 5e-8: same weights and buffers, loaded tensors take other kernel paths)
    np.testing.assert_allclose(pa.mask_logits[0], pb.mask_logits[0], atol=1e-6, rtol=0)
    assert np.array_equal(pa.masks[0], pb.masks[0])
    ids = torch.tensor([a.processor.encode(a.processor.conversation_prompt([(PROMPT, None)])) + pa.token_ids])
    inputs = a.processor.preprocess_image(image)
    with torch.no_grad():
        la = a.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs.pixel_values).logits
        lb = b.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs.pixel_values).logits
    torch.testing.assert_close(la, lb, atol=1e-6, rtol=0)


def test_native_save_and_load_round_trip(tiny_qwen, image, tmp_path):
    model, processor = tiny_qwen
    directory = save_native(model, processor, tmp_path / "native")
    assert json.loads((directory / "config.json").read_text())["model_type"] == "reasonseg_sa2va_qwen"
    loaded = Segmenter.from_pretrained(str(directory), device="cpu")
    assert type(loaded.model).__name__ == "Sa2VAQwenForCausalLM" and type(loaded.processor).__name__ == "Sa2VAQwenProcessor"
    _assert_same_outputs(Segmenter(model, processor), loaded, image)


def test_original_layout_loads_and_converts(tiny_qwen, image, tmp_path):
    from reasonseg.checkpoints.sa2va import convert_sa2va_checkpoint
    from reasonseg.checkpoints.sa2va_qwen import save_sa2va_qwen_layout

    model, processor = tiny_qwen
    directory = save_sa2va_qwen_layout(model, processor.tokenizer, tmp_path / "original", tiny_sam2_hints())
    (directory / "preprocessor_config.json").write_text(json.dumps({"patch_size": 4, "merge_size": 2}))
    config = json.loads((directory / "config.json").read_text())
    family = model.config.vlm_config.model_type
    assert config["architectures"] == ["Sa2VAChatModelQwen"] and config["vision_config"]["model_type"] == family
    loaded = Segmenter.from_pretrained(str(directory), device="cpu")
    settings = loaded.processor.settings  # Sa2VA's fixed sizes (1024-px SAM2, 512-2048 x 28^2 pixels) -> the tiny ones
    assert (settings.sam_image_size, settings.min_pixels, settings.patch_size) == (1024, 512 * 28 * 28, 4)
    settings.sam_image_size, settings.min_pixels, settings.max_pixels = 256, 256, 4096
    loaded.processor.__init__(loaded.processor.tokenizer, settings)
    _assert_same_outputs(Segmenter(model, processor), loaded, image)
    converted = Segmenter.from_pretrained(str(convert_sa2va_checkpoint(directory, tmp_path / "converted")), device="cpu")
    assert type(converted.model).__name__ == "Sa2VAQwenForCausalLM"


def test_pre_452_key_layout_maps_to_transformers_names():
    from reasonseg.checkpoints.sa2va_qwen import vlm_key_to_native

    assert vlm_key_to_native("visual.blocks.0.attn.qkv.weight") == "vlm.model.visual.blocks.0.attn.qkv.weight"
    assert vlm_key_to_native("model.layers.0.mlp.up_proj.weight") == "vlm.model.language_model.layers.0.mlp.up_proj.weight"
    assert vlm_key_to_native("model.language_model.norm.weight") == "vlm.model.language_model.norm.weight"
    assert vlm_key_to_native("lm_head.weight") == "vlm.lm_head.weight"


@pytest.mark.parametrize(
    "vision_type, named",
    [("qwen2_vl", "qwen2_vl"), ("qwen3_vl_moe", "qwen3_vl_moe"), (None, "(none")],
)
def test_unsupported_qwen_family_is_one_line(tmp_path, vision_type, named):
    config = {"architectures": ["Sa2VAChatModelQwen"], "model_type": "sa2va_chat"}
    if vision_type:
        config["vision_config"] = {"model_type": vision_type}
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError) as info:
        Segmenter.from_pretrained(str(directory), device="cpu")
    message = str(info.value)
    assert "\n" not in message and named in message and "Qwen2.5-VL" in message and "Qwen3-VL" in message
    assert "Sa2VAChatModel" in message


def test_unsupported_vlm_in_a_native_config_is_one_line(tiny_qwen):
    from reasonseg.modeling.sa2va import Sa2VAQwenConfig, Sa2VAQwenForCausalLM

    model, _ = tiny_qwen
    config = Sa2VAQwenConfig(vlm_config={"model_type": "qwen2_vl"}, sam_config=model.config.sam_config.to_dict())
    with pytest.raises(UnsupportedError) as info:
        Sa2VAQwenForCausalLM(config)
    assert "\n" not in str(info.value) and "qwen2_vl" in str(info.value) and "qwen2_5_vl" in str(info.value)


def test_qwen3_vl_prefill_equals_transformers_own_forward(image, tall_image):
    """The splice + deepstack inputs give the hidden states transformers' own Qwen3VLModel computes from its
    spelled-out ids and pixel values (deepstack added at the image positions after decoder layer 0); without the
    deepstack features they differ, so the check sees them."""
    model, processor = build_tiny_sa2va_qwen(seed=0, family="qwen3_vl")
    assert model.config.vlm_config.vision_config.deepstack_visual_indexes == [0]
    rows = []
    for picture, prompt in ((image, PROMPT), (tall_image, "What color is the background?")):
        inputs = processor.preprocess_image(picture)
        ids = processor.encode(processor.conversation_prompt([(prompt, None)]))
        features = model.encode_images(inputs.pixel_values)
        assert [tuple(d.shape) for d in features.deepstack] == [(1, features.embeddings[0].shape[0], 64)]
        rows.append((inputs, ids, features))
    for inputs, ids, features in rows:
        t = torch.tensor([ids])
        spliced = model.splice_inputs(t, torch.ones_like(t), features, [0])
        count = features.embeddings[0].shape[0]
        assert int(spliced.decoder_kwargs["visual_pos_masks"].sum()) == count
        expanded = torch.tensor([processor.expand_image_ids(ids, count)])
        types = (expanded == model.config.vlm_config.image_token_id).long()
        pixels = inputs.pixel_values.reshape(-1, inputs.pixel_values.shape[-1])
        with torch.no_grad():
            ours = model.decoder(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                 position_ids=spliced.position_ids, **spliced.decoder_kwargs).last_hidden_state
            without = model.decoder(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                    position_ids=spliced.position_ids).last_hidden_state
            own = model.vlm.model(input_ids=expanded, attention_mask=torch.ones_like(expanded), pixel_values=pixels,
                                  image_grid_thw=features.grids, mm_token_type_ids=types).last_hidden_state
        torch.testing.assert_close(ours, own, atol=1e-5, rtol=0)
        assert (without - own).abs().max() > 0.1
    # a left-padded batch of both images: each row's deepstack lands on its own image positions
    (a_inputs, a_ids, a_features), (b_inputs, b_ids, b_features) = rows
    longest = max(len(a_ids), len(b_ids))
    batch = torch.full((2, longest), processor.pad_token_id)
    mask = torch.zeros((2, longest), dtype=torch.long)
    for row, ids in enumerate((a_ids, b_ids)):
        batch[row, longest - len(ids):], mask[row, longest - len(ids):] = torch.tensor(ids), 1
    from reasonseg.modeling.sa2va.modeling_sa2va_qwen import QwenImageFeatures

    both = QwenImageFeatures.gather([a_features, b_features])
    spliced = model.splice_inputs(batch, mask, both, [0, 1], padding_side="left")
    with torch.no_grad():
        batched = model.decoder(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                position_ids=spliced.position_ids, **spliced.decoder_kwargs).last_hidden_state
    for row, (_, ids, features) in enumerate(rows):
        t = torch.tensor([ids])
        alone = model.splice_inputs(t, torch.ones_like(t), features, [0], padding_side="left")
        with torch.no_grad():
            single = model.decoder(inputs_embeds=alone.inputs_embeds, attention_mask=alone.attention_mask,
                                   position_ids=alone.position_ids, **alone.decoder_kwargs).last_hidden_state
        n = single.shape[1]
        torch.testing.assert_close(batched[row, -n:], single[0], atol=1e-5, rtol=0)


# ---- 8/4-bit loading and device_map (the InternVL family's mechanism, with the Qwen class's own part lists) ----
@pytest.fixture()
def saved_qwen(tiny_qwen, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # converted cache and offload folder under a throwaway home
    model, processor = tiny_qwen
    return model, processor, save_native(model, processor, tmp_path / "native")


# measured on the tiny models (Qwen2.5-VL / Qwen3-VL): 8-bit: all 7 ids equal, mask IoU 0.989 / 0.963, logit
# correlation 0.99993 / 0.99967; nf4: max mask-logit difference 0.015 / 0.032, but the ids already differ from the
# first token on Qwen2.5-VL and the tiny model's near-zero mask logits make its IoU meaningless (0.93 / 0.21)
@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_4bit"])
def test_quantised_loading_quantises_only_the_language_model(saved_qwen, image, flag):
    bnb = pytest.importorskip("bitsandbytes")
    model, processor, directory = saved_qwen
    reference = Segmenter(model, processor).predict(image, PROMPT, max_new_tokens=6, force_seg=True)
    quantised = Segmenter.from_pretrained(str(directory), device="cpu", **{flag: True})
    kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    want = bnb.nn.Linear8bitLt if flag == "load_in_8bit" else bnb.nn.Linear4bit
    q = quantised.model
    layer = q.decoder.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.up_proj, layer.mlp.down_proj):
        assert isinstance(linear, want)
    quantised_names = [name for name, m in q.named_modules() if isinstance(m, kinds)]
    assert len(quantised_names) == 14 and all(n.startswith("vlm.model.language_model.layers.") for n in quantised_names)
    for part in (q.vision_tower, q.sam, q.seg_projection, q.vlm.lm_head):  # kept out, in full precision
        assert not any(isinstance(m, kinds) for m in part.modules())
        assert all(p.dtype == torch.float32 for p in part.parameters())
    prediction = quantised.predict(image, PROMPT, max_new_tokens=6, force_seg=True)
    assert prediction.num_masks == 1 and prediction.masks[0].shape == (40, 56)
    if flag == "load_in_8bit":
        assert prediction.token_ids == reference.token_ids
        iou = (prediction.masks[0] & reference.masks[0]).sum() / (prediction.masks[0] | reference.masks[0]).sum()
        assert iou > 0.9
        assert np.corrcoef(prediction.mask_logits[0].ravel(), reference.mask_logits[0].ravel())[0, 1] > 0.999
    else:
        assert np.abs(prediction.mask_logits[0] - reference.mask_logits[0]).max() < 0.1


def test_original_layout_loads_in_8bit(tiny_qwen, tmp_path, monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")
    from reasonseg.checkpoints.sa2va_qwen import save_sa2va_qwen_layout

    monkeypatch.setenv("HOME", str(tmp_path))
    model, processor = tiny_qwen
    directory = save_sa2va_qwen_layout(model, processor.tokenizer, tmp_path / "original", tiny_sam2_hints())
    loaded = Segmenter.from_pretrained(str(directory), device="cpu", load_in_8bit=True)  # via the converted cache
    assert type(loaded.model).__name__ == "Sa2VAQwenForCausalLM"
    assert isinstance(loaded.model.decoder.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)


def test_device_map_auto_splits_the_language_model(saved_qwen, image):
    model, processor, directory = saved_qwen
    pinned_parts, language_parts = type(model).device_map_pinned_parts, type(model).device_map_language_parts
    assert pinned_parts == ("vlm.model.visual", "sam", "seg_projection")
    pinned = sum(p.numel() for name in pinned_parts for p in model.get_submodule(name).parameters()) * 4
    language = sum(p.numel() for name in language_parts for p in model.get_submodule(name).parameters()) * 4
    budget = {"cpu": pinned + language * 3 // 4}
    dispatched = Segmenter.from_pretrained(str(directory), device_map="auto", max_memory=budget)
    placement = dispatched.model.hf_device_map
    assert all(placement[name] == "cpu" for name in pinned_parts)
    assert {v for k, v in placement.items() if k.startswith(language_parts)} == {"cpu", "disk"}
    a = Segmenter(model, processor).predict(image, PROMPT, max_new_tokens=6, force_seg=True)
    b = dispatched.predict(image, PROMPT, max_new_tokens=6, force_seg=True)
    assert a.token_ids == b.token_ids
    # measured 5e-8 / 2e-8
    np.testing.assert_allclose(a.mask_logits[0], b.mask_logits[0], atol=1e-6, rtol=0)
    assert np.array_equal(a.masks[0], b.masks[0])
