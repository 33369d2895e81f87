"""Core behaviour on a tiny seeded model built from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonseg import Segmenter
from reasonseg.inference.generation import greedy_decode

from .conftest import counted_image_and_decoder_calls, counted_two_turn_chat, script_answers, teacher_forced_forward

PROMPT = "What is the red circle in this image? Please output segmentation mask."


def test_save_load_round_trip_gives_identical_outputs(tiny, rgb_image, tmp_path):
    model, processor = tiny
    seg_id = processor.seg_token_id
    script_answers(model, processor, [5, seg_id, 7])
    before = Segmenter(model, processor).predict(rgb_image, PROMPT, max_new_tokens=8)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = Segmenter.from_pretrained(str(tmp_path), device="cpu")
    script_answers(loaded.model, loaded.processor, [5, seg_id, 7])
    after = loaded.predict(rgb_image, PROMPT, max_new_tokens=8)
    assert after.token_ids == before.token_ids and after.text == before.text
    assert len(after.masks) == 1
    np.testing.assert_allclose(after.mask_logits[0], before.mask_logits[0], atol=1e-6, rtol=0)


def test_several_seg_tokens_give_several_masks(tiny, rgb_image):
    model, processor = tiny
    seg_id = processor.seg_token_id
    script_answers(model, processor, [seg_id, 9, seg_id, 11, seg_id])
    prediction = Segmenter(model, processor).predict(rgb_image, PROMPT, max_new_tokens=10)
    assert prediction.token_ids.count(seg_id) == 3
    assert len(prediction.masks) == 3 and len(prediction.mask_logits) == 3 and len(prediction.scores) == 3
    for mask, logits in zip(prediction.masks, prediction.mask_logits):
        assert mask.shape == (60, 80) and mask.dtype == bool and logits.dtype == np.float32
        assert np.array_equal(mask, logits > 0)
    # three different hidden states -> three different masks
    assert not np.allclose(prediction.mask_logits[0], prediction.mask_logits[1])


def test_zero_seg_tokens_give_no_mask(tiny, rgb_image):
    model, processor = tiny
    script_answers(model, processor, [5, 6, 7])
    prediction = Segmenter(model, processor).predict(rgb_image, PROMPT, max_new_tokens=10)
    assert prediction.masks == [] and prediction.mask_logits == []
    assert prediction.token_ids == [5, 6, 7, processor.eos_token_id]


def test_force_seg_adds_a_mask_only_when_missing(tiny, rgb_image):
    model, processor = tiny
    script_answers(model, processor, [5, 6])
    segmenter = Segmenter(model, processor)
    plain = segmenter.predict(rgb_image, PROMPT, max_new_tokens=10)
    script_answers(model, processor, [5, 6])
    forced = segmenter.predict(rgb_image, PROMPT, max_new_tokens=10, force_seg=True)
    assert plain.masks == [] and len(forced.masks) == 1 and forced.seg_forced
    assert "forced" in forced.text and "[SEG]" in forced.text


def _prompt_embeddings(model, processor, image):
    inputs = processor.preprocess_image(image)
    ids = torch.tensor([processor.encode(processor.conversation_prompt([(PROMPT, None)]))])
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
    spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left")
    return spliced


def test_kv_cache_matches_full_recomputation(tiny, rgb_image):
    model, processor = tiny
    spliced = _prompt_embeddings(model, processor, rgb_image)
    args = (model.decoder, model.get_output_embeddings(), model.get_input_embeddings())
    common = dict(max_new_tokens=24, eos_token_id=None)
    cached = greedy_decode(*args, spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids, **common)
    full = greedy_decode(
        *args, spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids, use_cache=False, **common
    )
    assert cached.new_ids == full.new_ids and len(cached.new_ids[0]) == 24
    torch.testing.assert_close(cached.step_states[0], full.step_states[0], atol=1e-5, rtol=0)


def test_the_kv_cache_goes_by_the_name_the_installed_transformers_takes(tiny, rgb_image):
    """transformers 5.25 renamed the decoders' ``past_key_values`` to ``cache`` (the old name warns on every step and
    goes in 5.40); a decoder of an older release still takes ``past_key_values``."""
    import inspect
    import warnings

    from reasonseg.inference.generation import kv_cache_kwargs

    model, processor = tiny
    expected = "cache" if "cache" in inspect.signature(type(model.decoder).forward).parameters else "past_key_values"
    assert list(kv_cache_kwargs(model.decoder, "c")) == [expected]

    class OlderDecoder(torch.nn.Module):
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None):
            return past_key_values

    assert kv_cache_kwargs(OlderDecoder(), "c") == {"past_key_values": "c"}
    segmenter = Segmenter(model, processor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        script_answers(model, processor, [5, 6, 7])
        # answers cut short, so their last token and the forced [SEG] are fed to the batch's cache
        forced = segmenter.predict_batch([rgb_image, rgb_image], [PROMPT, PROMPT], max_new_tokens=2, force_seg=True)[0]
        session = segmenter.chat(rgb_image)
        session.ask(PROMPT, max_new_tokens=4)
        session.ask(PROMPT, max_new_tokens=4)  # the first answer's tail is fed to the cache
    assert forced.seg_forced and len(forced.masks) == 1
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]


def test_seg_states_equal_a_teacher_forced_forward(tiny, rgb_image):
    """The [SEG] state collected during decoding equals the one a full forward over the answer takes."""
    model, processor = tiny
    seg_id = processor.seg_token_id
    script = [5, seg_id, 9, seg_id]
    script_answers(model, processor, script)
    prediction = Segmenter(model, processor).predict(rgb_image, PROMPT, max_new_tokens=6)
    out, _, _ = teacher_forced_forward(model, processor, rgb_image, PROMPT, prediction.token_ids)
    assert len(out.pred_masks[0]) == 2
    np.testing.assert_allclose(out.pred_masks[0].numpy(), np.stack(prediction.mask_logits), atol=1e-5, rtol=0)


def test_second_turn_reuses_image_features(tiny, rgb_image):
    model, processor = tiny
    seg_id = processor.seg_token_id
    script_answers(model, processor, [5, seg_id, processor.eos_token_id, 7, seg_id])
    first, second, calls, _ = counted_two_turn_chat(model, processor, rgb_image, PROMPT, "and the other one?", 5)
    assert (calls["vision"], calls["sam"]) == (1, 1)
    assert len(first.masks) == 1 and len(second.masks) == 1


def test_reset_starts_a_new_conversation_on_the_same_encodings(tiny, rgb_image):
    """After ``reset`` a question is answered as the first question of a new session, without encoding again."""
    model, processor = tiny
    model.language_model.lm_head.weight.data[processor.seg_token_id] += 0.5  # some [SEG]s, so masks are compared too
    fresh = Segmenter(model, processor).predict(rgb_image, "and the other one?", max_new_tokens=6)
    with counted_image_and_decoder_calls(model) as calls:
        session = Segmenter(model, processor).chat(rgb_image)
        continued = session.ask(PROMPT, max_new_tokens=6)
        session.reset()
        again = session.ask("and the other one?", max_new_tokens=6)
    assert (calls["vision"], calls["sam"]) == (1, 1)
    assert [turn for turn, _ in session.turns] == ["and the other one?"] and continued.text
    assert again.token_ids == fresh.token_ids and again.text == fresh.text
    assert len(again.mask_logits) == len(fresh.mask_logits)
    for ours, theirs in zip(again.mask_logits, fresh.mask_logits):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_second_turn_continues_the_conversation(tiny, rgb_image):
    """Turn two through the KV cache equals decoding the whole two-turn conversation from scratch."""
    model, processor = tiny
    session = Segmenter(model, processor).chat(rgb_image)
    first = session.ask(PROMPT, max_new_tokens=6)
    second = session.ask("and the other one?", max_new_tokens=6)
    history = processor.encode(processor.conversation_prompt([(PROMPT, None)])) + first.token_ids
    if first.token_ids[-1] != processor.eos_token_id:
        history.append(processor.eos_token_id)
    ids = torch.tensor([history + processor.continuation_ids("and the other one?")])
    inputs = processor.preprocess_image(rgb_image)
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
    spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left")
    fresh = greedy_decode(
        model.decoder,
        model.get_output_embeddings(),
        model.get_input_embeddings(),
        spliced.inputs_embeds,
        spliced.attention_mask,
        spliced.position_ids,
        max_new_tokens=6,
        eos_token_id=processor.eos_token_id,
    )
    assert fresh.new_ids[0] == second.token_ids


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_prompt_is_refused(tiny, rgb_image, bad):
    from reasonseg.errors import InputError

    model, processor = tiny
    with pytest.raises(InputError, match="prompt is empty"):
        Segmenter(model, processor).predict(rgb_image, bad)


def test_sam_built_from_a_config_encodes_nearby_points_alike(tiny):
    """SAM's random Fourier encoding at SAM's scale: a point 1% of the image away looks like its neighbour, a far one
    does not (at transformers' default scale, hidden_size // 2, every position looks unrelated and a SAM trained from
    scratch learns to ignore its prompts)."""
    model, _ = tiny
    encode = model.sam.shared_image_embedding
    points = torch.tensor([[[[0.5, 0.5], [0.51, 0.5], [0.9, 0.2]]]])
    with torch.no_grad():
        here, near, far = torch.nn.functional.normalize(encode(points)[0, 0], dim=-1)
    assert float(here @ near) > 0.95
    assert float(here @ far) < 0.5
