"""image_attention="bidirectional": the image tokens see each other both ways, everything else stays causal, and
decoding (cached, uncached, batched, chat) agrees with the teacher-forced forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonseg import Segmenter
from reasonseg.errors import InputError
from reasonseg.inference.generation import greedy_decode
from reasonseg.modeling.image_attention import check_image_attention, image_block_attention_mask
from reasonseg.modeling.tiny import build_tiny_model

from .conftest import script_answers, teacher_forced_forward

PROMPT = "What is the red circle in this image? Please output segmentation mask."


def test_mask_opens_the_image_block_and_keeps_the_rest_causal():
    # row 0: text, image x3, text, text; row 1: left padding, then text, image x2, text
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    image = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    mask = image_block_attention_mask(attention, image)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    expected0 = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    expected0[1:4, 1:4] = True  # each image token sees all three
    assert torch.equal(mask[0, 0], expected0)
    row1 = mask[1, 0]
    assert row1[0].tolist() == [True, False, False, False, False, False]  # padding sees itself only
    assert row1[1].tolist() == [False, True, False, False, False, False]
    assert row1[3].tolist() == [False, False, True, True, True, False]  # first image token sees the second
    assert row1[5].tolist() == [False, False, True, True, True, True]


def test_mask_for_the_last_positions_is_the_full_masks_last_rows_and_eager_is_additive():
    attention = torch.ones((1, 7), dtype=torch.long)
    image = torch.tensor([[0, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    full = image_block_attention_mask(attention, image)
    assert torch.equal(image_block_attention_mask(attention, image, query_length=3), full[:, :, -3:])
    # image positions of the new input only (a continuation after a cache) are aligned on the right
    assert torch.equal(image_block_attention_mask(attention, image[:, -5:], query_length=5), full[:, :, -5:])
    eager = image_block_attention_mask(attention, image, attn_implementation="eager", dtype=torch.bfloat16)
    assert eager.dtype == torch.bfloat16
    assert torch.equal(eager == 0, full) and bool((eager[~full] == torch.finfo(torch.bfloat16).min).all())


def test_unsupported_modes_and_kernels_say_what_to_do():
    with pytest.raises(InputError, match="image_attention 'both'"):
        check_image_attention("both")
    with pytest.raises(InputError, match="attn_implementation='sdpa'"):
        image_block_attention_mask(torch.ones((1, 2)), torch.zeros((1, 2), dtype=torch.bool),
                                   attn_implementation="flash_attention_2")


@pytest.fixture(scope="module")
def tiny_pair():
    return build_tiny_model(seed=0)[0], build_tiny_model(seed=0, image_attention="bidirectional")


def _prompt_spliced(model, processor, image):
    inputs = processor.preprocess_image(image)
    ids = torch.tensor([processor.encode(processor.conversation_prompt([(PROMPT, None)]))])
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
    return model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left"), features


def test_first_image_token_sees_later_patches_only_when_bidirectional(tiny_pair, rgb_image):
    causal, (bidirectional, processor) = tiny_pair
    spliced, features = _prompt_spliced(bidirectional, processor, rgb_image)
    image_at = torch.nonzero(spliced.image_positions[0]).flatten()
    assert len(image_at) == features.shape[1]
    changed = spliced.inputs_embeds.clone()
    changed[0, image_at[-1]] += 1.0  # alter the last patch
    first = int(image_at[0])
    with torch.no_grad():
        for model, moves in ((causal, False), (bidirectional, True)):
            spliced.inputs_embeds, before = changed, spliced.inputs_embeds
            after_state = model.decoder(inputs_embeds=changed, attention_mask=model.decoder_attention_mask(spliced),
                                        position_ids=spliced.position_ids).last_hidden_state[0, first]
            spliced.inputs_embeds = before
            before_state = model.decoder(inputs_embeds=before, attention_mask=model.decoder_attention_mask(spliced),
                                         position_ids=spliced.position_ids).last_hidden_state[0, first]
            assert (not torch.allclose(before_state, after_state, atol=1e-6)) == moves
    assert causal.decoder_attention_mask(spliced) is spliced.attention_mask  # causal models keep the 2D mask


def test_bidirectional_decoding_cached_equals_uncached(tiny_pair, rgb_image):
    model, processor = tiny_pair[1]
    spliced, _ = _prompt_spliced(model, processor, rgb_image)
    args = (model.decoder, model.get_output_embeddings(), model.get_input_embeddings(), spliced.inputs_embeds,
            spliced.attention_mask, spliced.position_ids)
    common = dict(max_new_tokens=12, eos_token_id=None, image_positions=spliced.image_positions)
    cached = greedy_decode(*args, **common)
    uncached = greedy_decode(*args, use_cache=False, **common)
    assert cached.new_ids == uncached.new_ids
    torch.testing.assert_close(cached.step_states[0], uncached.step_states[0], atol=1e-5, rtol=0)
    causal_states = greedy_decode(*args, max_new_tokens=12, eos_token_id=None).step_states[0]
    assert not torch.allclose(causal_states[0], cached.step_states[0], atol=1e-4)  # the block mask is in effect


def test_bidirectional_seg_masks_from_decoding_equal_the_teacher_forced_forward(rgb_image):
    model, processor = build_tiny_model(seed=0, image_attention="bidirectional")
    seg_id = processor.seg_token_id
    script_answers(model, processor, [5, seg_id, 9, seg_id])
    segmenter = Segmenter(model, processor)
    prediction = segmenter.predict(rgb_image, PROMPT, max_new_tokens=6)
    out, _, _ = teacher_forced_forward(model, processor, rgb_image, PROMPT, prediction.token_ids)
    np.testing.assert_allclose(out.pred_masks[0].numpy(), np.stack(prediction.mask_logits), atol=1e-5, rtol=0)
    # the batched path (left-padded: the short second prompt gets padding) gives the same masks
    script_answers(model, processor, [5, seg_id, 9, seg_id])
    batched = segmenter.predict_batch([rgb_image], [[PROMPT, "Segment it."]], max_new_tokens=6)[0]
    assert batched[0].token_ids == prediction.token_ids
    np.testing.assert_allclose(np.stack(batched[0].mask_logits), np.stack(prediction.mask_logits), atol=1e-5, rtol=0)


def test_image_attention_survives_save_and_load(tmp_path):
    model, processor = build_tiny_model(seed=0, image_attention="bidirectional")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert Segmenter.from_pretrained(str(tmp_path), device="cpu").model.config.image_attention == "bidirectional"
