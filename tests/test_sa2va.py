"""Sa2VA beyond the parity fixture: processor rules, chat sessions (features and KV cache reused), several [SEG]s in
one decoder call, stop tokens, native save/load, precision and quantisation, InternLM2 mapping, device maps, and
errors.

Tiny config-built models (``reasonseg.modeling.sa2va.tiny``) need nothing else; tests that use the Sa2VA reference
checkpoint (``../shared/fixtures/sa2va_ref_tiny``) skip when it is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reasonseg import Segmenter
from reasonseg.inference.generation import greedy_decode

from .conftest import counted_two_turn_chat, forward_over_ids, script_answers, teacher_forced_forward

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "sa2va_ref_tiny"
PROMPT = "Please segment the blood vessel."


@pytest.fixture()
def tiny_sa2va():
    from reasonseg.modeling.sa2va.tiny import build_tiny_sa2va

    return build_tiny_sa2va(seed=0)


@pytest.fixture()
def wide_image() -> Image.Image:  # 2:1 -> two tiles + thumbnail
    rng = np.random.RandomState(1)
    return Image.fromarray((rng.rand(40, 80, 3) * 255).astype(np.uint8))


@pytest.fixture()
def square_image() -> Image.Image:  # one tile
    rng = np.random.RandomState(2)
    return Image.fromarray((rng.rand(50, 50, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def fixture_checkpoint() -> Path:
    if not FIXTURE.is_dir():
        pytest.skip(f"Sa2VA reference fixture not found at {FIXTURE} (it ships beside the repo, not in it)")
    return FIXTURE / "checkpoint"


@pytest.fixture(scope="module")
def fixture_segmenter(fixture_checkpoint) -> Segmenter:
    return Segmenter.from_pretrained(str(fixture_checkpoint), device="cpu")


# ------------------------------------------------------------------------------------------------- processor
@pytest.mark.parametrize(
    "size, tiles",
    [((96, 96), 1), ((128, 64), 3), ((88, 80), 1), ((40, 30), 13), ((1000, 1000), 10), ((30, 400), 12 + 1)],
)
def test_dynamic_tiling_counts(size, tiles):
    """InternVL's rule: closest grid aspect; on ties a larger grid only for images of more than half its area
    (so a small 4:3 image becomes 4x3 tiles + thumbnail, a 1000x1000 one 3x3 + thumbnail)."""
    from reasonseg.processing.sa2va import dynamic_tiles

    image = Image.new("RGB", size, (10, 20, 30))
    got = dynamic_tiles(image, 1, 12, 448, True)
    assert len(got) == tiles and all(t.size == (448, 448) for t in got)


def test_image_placeholder_goes_where_sa2va_puts_it(tiny_sa2va):
    _, processor = tiny_sa2va
    image = "<img><image></img>"
    assert processor.user_message("Segment it.", True) == image + "Segment it."
    assert processor.user_message("<image>\nSegment it.", True) == image + "\nSegment it."
    assert processor.user_message("Look: <image> segment it.", True) == "Look: " + image + " segment it."
    assert processor.user_message("<image>a<image>b", True) == image + "ab"  # one image per conversation
    assert processor.user_message("<image>and this?", False) == "and this?"
    ids = processor.encode(processor.conversation_prompt([("Segment it.", None)]))
    assert ids.count(processor.settings.image_token_index) == 1
    text = processor.tokenizer.decode(processor.expand_image_ids(ids, 3, tokens_per_tile=4))
    assert text == "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 12 + "</img>Segment it.<|im_end|>\n<|im_start|>assistant\n"


def test_template_turns_match_the_continuation(tiny_sa2va):
    """Two rendered turns = first turn + answer + stop token + the continuation ids (xtuner's multi-turn format)."""
    _, processor = tiny_sa2va
    first = processor.encode(processor.conversation_prompt([("Segment it.", None)]))
    answer = processor.tokenizer.encode("Sure, [SEG].", add_special_tokens=False)
    both = processor.encode(processor.conversation_prompt([("Segment it.", "Sure, [SEG]."), ("And that?", None)]))
    assert both == first + answer + [processor.eos_token_id] + processor.continuation_ids("And that?")
    rendered = processor.template.render([("q", "a"), ("r", None)])
    assert rendered == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>user\nr<|im_end|>\n<|im_start|>assistant\n"


def test_decode_keeps_seg_and_drops_the_stop_token(tiny_sa2va):
    _, processor = tiny_sa2va
    ids = processor.tokenizer.encode("Sure, [SEG] and [SEG].", add_special_tokens=False) + [processor.eos_token_id]
    assert processor.decode(ids) == "Sure, [SEG] and [SEG]."


def test_processor_save_load_round_trip(tiny_sa2va, tmp_path, wide_image):
    from reasonseg.processing.sa2va import Sa2VAProcessor

    _, processor = tiny_sa2va
    processor.save_pretrained(tmp_path)
    loaded = Sa2VAProcessor.from_pretrained(tmp_path)
    assert loaded.settings == processor.settings
    assert loaded.encode(loaded.conversation_prompt([(PROMPT, None)])) == processor.encode(
        processor.conversation_prompt([(PROMPT, None)])
    )
    a, b = processor.preprocess_image(wide_image), loaded.preprocess_image(wide_image)
    assert torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.sam_pixel_values, b.sam_pixel_values)


# ------------------------------------------------------------------------------------------------- tiny model
def test_several_seg_decode_in_one_call_equal_one_at_a_time(tiny_sa2va, wide_image):
    model, processor = tiny_sa2va
    seg_id = processor.seg_token_id
    calls = {"decoder": 0}
    forward = model.sam.mask_decoder.forward

    def counted(*args, **kwargs):
        calls["decoder"] += 1
        return forward(*args, **kwargs)

    model.sam.mask_decoder.forward = counted
    script_answers(model, processor, [seg_id, 49, seg_id, 51, seg_id, processor.eos_token_id])
    prediction = Segmenter(model, processor).predict(wide_image, PROMPT, max_new_tokens=8)
    assert prediction.num_masks == 3 and calls["decoder"] == 1
    assert prediction.text.count("[SEG]") == 3
    # each [SEG] alone gives the same mask
    inputs = processor.preprocess_image(wide_image)
    with torch.no_grad():
        features = model.encode_sam_images(inputs.sam_pixel_values)
        prompt_ids = processor.encode(processor.conversation_prompt([(PROMPT, None)]))
        ids = torch.tensor([prompt_ids + prediction.token_ids])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs.pixel_values,
                    return_logits=False)
        for j, state in enumerate(out.seg_hidden_states):
            single, _, _, _ = model.masks_from_seg_hidden(state[None], features, inputs.resized_size, inputs.original_size)
            np.testing.assert_allclose(single[0].numpy(), prediction.mask_logits[j], atol=1e-5, rtol=0)


def test_seg_state_is_taken_at_the_seg_position(tiny_sa2va, wide_image):
    """Sa2VA's convention: the hidden state where [SEG] is the input token (not the one that predicted it)."""
    model, processor = tiny_sa2va
    seg_id = processor.seg_token_id
    script_answers(model, processor, [45, seg_id, 49, processor.eos_token_id])
    prediction = Segmenter(model, processor).predict(wide_image, PROMPT, max_new_tokens=6)
    out, ids, inputs = teacher_forced_forward(model, processor, wide_image, PROMPT, prediction.token_ids)
    prompt_length = ids.shape[1] - len(prediction.token_ids)
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
        spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0])
        hidden = model.decoder(inputs_embeds=spliced.inputs_embeds).last_hidden_state[0]
    position = int(spliced.token_positions[0, prompt_length + 1])
    assert int(ids[0, prompt_length + 1]) == seg_id
    np.testing.assert_allclose(out.seg_hidden_states[0].numpy(), hidden[position].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.pred_masks[0].numpy(), np.stack(prediction.mask_logits), atol=1e-5, rtol=0)


def test_trailing_seg_still_gives_a_mask_and_force_seg_works(tiny_sa2va, square_image):
    """Sa2VA drops a [SEG] that ends the answer (its state never comes out of generate); reasonseg feeds it."""
    model, processor = tiny_sa2va
    seg_id = processor.seg_token_id
    script_answers(model, processor, [45, seg_id])
    assert Segmenter(model, processor).predict(square_image, PROMPT, max_new_tokens=2).num_masks == 1
    script_answers(model, processor, [45, 46, processor.eos_token_id])
    forced = Segmenter(model, processor).predict(square_image, PROMPT, max_new_tokens=4, force_seg=True)
    assert forced.num_masks == 1 and forced.seg_forced


def test_chat_second_question_reuses_features_and_kv_cache(tiny_sa2va, wide_image):
    model, processor = tiny_sa2va
    seg_id, eos = processor.seg_token_id, processor.eos_token_id
    script_answers(model, processor, [45, seg_id, 48, eos, 47, seg_id, 49, eos])
    first, second, calls, first_calls = counted_two_turn_chat(model, processor, wide_image, PROMPT,
                                                              "And the other one?", 6)
    assert calls["vision"] == 1 and calls["sam"] == 1
    continuation = [eos] if first.token_ids[-1] != eos else []
    # the second turn feeds only its own ids (the stop token still pending + separator + question), not the history
    assert calls["decoder_lengths"][first_calls] == len(first.token_ids[-1:] + continuation + processor.continuation_ids("And the other one?"))
    assert first.num_masks == 1 and second.num_masks == 1

    # the same second answer and mask from scratch, without any cache
    history = processor.encode(processor.conversation_prompt([(PROMPT, None)])) + first.token_ids + continuation
    ids = history + processor.continuation_ids("And the other one?") + second.token_ids
    out, _, _ = forward_over_ids(model, processor, wide_image, ids)
    assert len(out.pred_masks[0]) == 2  # both turns' [SEG]s
    np.testing.assert_allclose(out.pred_masks[0][1].numpy(), second.mask_logits[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.pred_masks[0][0].numpy(), first.mask_logits[0], atol=1e-5, rtol=0)


def test_second_question_equals_fresh_decoding_of_the_conversation(tiny_sa2va, wide_image):
    model, processor = tiny_sa2va
    session = Segmenter(model, processor).chat(wide_image)
    first = session.ask(PROMPT, max_new_tokens=5)
    second = session.ask("And the other one?", max_new_tokens=5)
    history = processor.encode(processor.conversation_prompt([(PROMPT, None)])) + first.token_ids
    if first.token_ids[-1] != processor.eos_token_id:
        history.append(processor.eos_token_id)
    ids = torch.tensor([history + processor.continuation_ids("And the other one?")])
    inputs = processor.preprocess_image(wide_image)
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
    spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left")
    fresh = greedy_decode(model.decoder, model.get_output_embeddings(), model.get_input_embeddings(),
                          spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids, max_new_tokens=5,
                          eos_token_id=processor.eos_token_id, use_cache=False)
    assert fresh.new_ids[0] == second.token_ids


def _endoftext_after(model, token_id: int, calls_before: int):
    """Bias the real lm_head so that ``token_id`` is the argmax from its ``calls_before + 1``-th call on."""
    calls = {"n": 0}

    def bias(module, args, output):
        calls["n"] += 1
        if calls["n"] <= calls_before:
            return output
        biased = output.clone()
        biased[..., token_id] += 1e4
        return biased

    return model.get_output_embeddings().register_forward_hook(bias)


def test_decoding_stops_at_endoftext_as_sa2va_does(tiny_sa2va, square_image):
    """Sa2VA's qwen_chat template stops at <|im_end|> and at <|endoftext|>; reasonseg passes both to the decoder."""
    model, processor = tiny_sa2va
    vocab = processor.tokenizer.get_vocab()
    im_end, endoftext = vocab["<|im_end|>"], vocab["<|endoftext|>"]
    assert processor.eos_token_id == im_end and processor.stop_token_ids == {im_end, endoftext}
    segmenter = Segmenter(model, processor)
    free = segmenter.predict(square_image, PROMPT, max_new_tokens=6)
    assert len(free.token_ids) == 6 and not {im_end, endoftext} & set(free.token_ids)

    handle = _endoftext_after(model, endoftext, 2)
    stopped = segmenter.predict(square_image, PROMPT, max_new_tokens=6)
    assert stopped.token_ids == free.token_ids[:2] + [endoftext]
    assert stopped.text == processor.decode(free.token_ids[:2])

    # the decoding loop itself: several stop ids (list, tuple, set) end a row at the first one produced; the single
    # template stop id alone runs on past <|endoftext|> to max_new_tokens
    inputs = processor.preprocess_image(square_image)
    ids = torch.tensor([processor.encode(processor.conversation_prompt([(PROMPT, None)]))])
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
    spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left")
    got = {}
    for name, stops in [("list", [im_end, endoftext]), ("tuple", (endoftext, im_end)), ("set", {im_end, endoftext}),
                        ("int", im_end)]:
        handle.remove()
        handle = _endoftext_after(model, endoftext, 2)
        result = greedy_decode(model.decoder, model.get_output_embeddings(), model.get_input_embeddings(),
                               spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids, max_new_tokens=5,
                               eos_token_id=stops)
        got[name] = result.new_ids[0]
    handle.remove()
    assert got["list"] == got["tuple"] == got["set"] == free.token_ids[:2] + [endoftext]
    assert got["int"] == free.token_ids[:2] + [endoftext] * 3


def test_answer_ended_by_endoftext_is_closed_with_im_end_in_chat(tiny_sa2va, square_image):
    """The next turn continues xtuner's format (answer, <|im_end|>, separator, question): the unfed <|endoftext|>
    is replaced by <|im_end|>; a [SEG] before it still gives its mask, and force_seg replaces the stop token."""
    model, processor = tiny_sa2va
    endoftext = processor.tokenizer.get_vocab()["<|endoftext|>"]
    im_end, seg_id = processor.eos_token_id, processor.seg_token_id
    script_answers(model, processor, [45, seg_id, endoftext, 47, endoftext])
    prefills = []
    decoder_forward = model.decoder.forward

    def decoder(*args, **kwargs):
        prefills.append(kwargs["inputs_embeds"].detach().clone())
        return decoder_forward(*args, **kwargs)

    model.decoder.forward = decoder
    session = Segmenter(model, processor).chat(square_image)
    first = session.ask(PROMPT, max_new_tokens=6)
    assert first.token_ids == [45, seg_id, endoftext] and first.num_masks == 1 and first.text.endswith("[SEG]")
    calls = len(prefills)
    second = session.ask("And the other one?", max_new_tokens=6, force_seg=True)
    expected = torch.tensor([[im_end] + processor.continuation_ids("And the other one?")])
    with torch.no_grad():
        torch.testing.assert_close(prefills[calls], model.get_input_embeddings()(expected), atol=0, rtol=0)
    assert second.token_ids == [47, seg_id] and second.seg_forced and second.num_masks == 1
    model.decoder.forward = decoder_forward


def test_lisa_decoding_still_stops_at_its_eos(tiny, rgb_image):
    model, processor = tiny
    eos = processor.eos_token_id
    assert processor.stop_token_ids == {eos}
    script_answers(model, processor, [45, 46, eos, 47, 48])
    assert Segmenter(model, processor).predict(rgb_image, "the circle", max_new_tokens=6).token_ids == [45, 46, eos]
    script_answers(model, processor, [45, 46, 47, 48, 49, 50])
    assert Segmenter(model, processor).predict(rgb_image, "the circle", max_new_tokens=4).token_ids == [45, 46, 47, 48]


def test_predict_batch_with_different_tile_counts_equals_predict(tiny_sa2va, wide_image, square_image):
    model, processor = tiny_sa2va
    seg_id = processor.seg_token_id
    segmenter = Segmenter(model, processor)
    images = [wide_image, square_image, wide_image]
    assert [processor.preprocess_image(i).pixel_values.shape[1] for i in images] == [3, 1, 3]
    single = []
    for image in images:
        script_answers(model, processor, [45, seg_id, 48, processor.eos_token_id])
        single.append(segmenter.predict(image, PROMPT, max_new_tokens=5))
    head = script_answers(model, processor, [45, seg_id, 48, processor.eos_token_id])
    head.forward = _batched_script(head)
    batch = segmenter.predict_batch(images, PROMPT, batch_size=3, max_new_tokens=5)
    for a, b in zip(single, batch):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(np.stack(a.mask_logits), np.stack(b.mask_logits), atol=1e-5, rtol=0)


def _batched_script(head):
    """The scripted head for a batch: every row gets the script's next token at each step."""

    def forward(hidden):
        token = head.script[head.calls] if head.calls < len(head.script) else head.eos_id
        head.calls += 1
        logits = torch.zeros(*hidden.shape[:-1], head.vocab_size)
        logits[..., token] = 1.0
        return logits + 0 * hidden.sum(-1, keepdim=True)

    return forward


def test_native_save_load_round_trip(tiny_sa2va, wide_image, tmp_path):
    model, processor = tiny_sa2va
    seg_id = processor.seg_token_id
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    script_answers(model, processor, [45, seg_id, 47, processor.eos_token_id])
    reference = Segmenter(model, processor).predict(wide_image, PROMPT, max_new_tokens=5)
    loaded = Segmenter.from_pretrained(str(tmp_path), device="cpu")
    assert type(loaded.model) is type(model) and loaded.model.config.seg_hidden_position == "at"
    script_answers(loaded.model, loaded.processor, [45, seg_id, 47, processor.eos_token_id])
    again = loaded.predict(wide_image, PROMPT, max_new_tokens=5)
    assert again.token_ids == reference.token_ids and again.text == reference.text
    np.testing.assert_allclose(again.mask_logits[0], reference.mask_logits[0], atol=1e-5, rtol=0)


def test_training_forward_gives_losses_and_gradients(tiny_sa2va, wide_image, square_image):
    """Several images with different tile counts in one batch; CE + mask losses; gradients reach SAM2's decoder."""
    model, processor = tiny_sa2va
    model.train()
    seg_id = processor.seg_token_id
    rows, labels = [], []
    for _ in range(2):
        prompt = processor.encode(processor.conversation_prompt([(PROMPT, None)]))
        answer = [45, seg_id, 47, processor.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    ids, labels = torch.tensor(rows), torch.tensor(labels)
    inputs = [processor.preprocess_image(wide_image), processor.preprocess_image(square_image)]
    out = model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=[i.pixel_values[0] for i in inputs],
        sam_pixel_values=torch.cat([i.sam_pixel_values for i in inputs]),
        resized_sizes=[i.resized_size for i in inputs],
        original_sizes=[i.original_size for i in inputs],
        labels=labels,
        gt_masks=[torch.ones(1, *i.original_size) for i in inputs],
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.mask_loss is not None
    assert model.sam.mask_decoder.iou_token.weight.grad is not None
    assert model.seg_projection.layers[0].weight.grad is not None
    model.eval()


# ------------------------------------------------------------------------------------------------- fixture checkpoint
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_keep_the_mask_side_in_fp32(fixture_checkpoint, fixture_segmenter, precision):
    half = Segmenter.from_pretrained(str(fixture_checkpoint), precision=precision, device="cpu")
    model = half.model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert model.language_model.model.embed_tokens.weight.dtype == dtype
    assert model.vision_tower.embeddings.patch_embeddings.projection.weight.dtype == dtype
    assert model.multi_modal_projector[1].weight.dtype == dtype
    encoder = model.sam.vision_encoder.backbone.patch_embed.projection.weight.dtype
    assert encoder == (torch.float32 if precision == "fp16" else dtype)  # no fp16 on CPU for the image encoder
    for part in (model.sam.mask_decoder, model.sam.prompt_encoder, model.seg_projection):
        assert all(p.dtype == torch.float32 for p in part.parameters())
    image = str(FIXTURE / "inputs" / "vessel.png")
    prediction = half.predict(image, PROMPT)
    reference = fixture_segmenter.predict(image, PROMPT)
    assert prediction.text == reference.text and prediction.num_masks == 1
    correlation = np.corrcoef(prediction.mask_logits[0].ravel(), reference.mask_logits[0].ravel())[0, 1]
    assert correlation > 0.9


@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_4bit"])
def test_quantised_loading_keeps_vision_sam2_and_seg_projection_out(fixture_checkpoint, tmp_path, monkeypatch, flag):
    bnb = pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("HOME", str(tmp_path))  # the converted cache goes under a throwaway home
    quantised = Segmenter.from_pretrained(str(fixture_checkpoint), device="cpu", **{flag: True})
    kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    model = quantised.model
    assert isinstance(model.language_model.model.layers[0].mlp.up_proj, kinds)
    for part in (model.vision_tower, model.multi_modal_projector, model.sam, model.seg_projection,
                 model.language_model.lm_head):
        assert not any(isinstance(m, kinds) for m in part.modules())
    prediction = quantised.predict(str(FIXTURE / "inputs" / "vessel.png"), PROMPT)
    assert prediction.masks and prediction.masks[0].shape == (96, 96)


def test_device_map_auto_splits_the_language_model(fixture_checkpoint, fixture_segmenter, tmp_path, monkeypatch):
    from reasonseg.checkpoints.loading import PINNED_PARTS

    monkeypatch.setenv("HOME", str(tmp_path))
    model = fixture_segmenter.model
    pinned = sum(p.numel() for name in PINNED_PARTS for p in getattr(model, name).parameters()) * 4
    language = sum(p.numel() for p in model.language_model.parameters()) * 4
    dispatched = Segmenter.from_pretrained(
        str(fixture_checkpoint), device_map="auto", max_memory={"cpu": pinned + language * 3 // 4}
    )
    placement = dispatched.model.hf_device_map
    assert all(placement[name] == "cpu" for name in PINNED_PARTS)
    assert {v for k, v in placement.items() if k.startswith("language_model")} == {"cpu", "disk"}
    image = str(FIXTURE / "inputs" / "vessel.png")
    a, b = fixture_segmenter.predict(image, PROMPT), dispatched.predict(image, PROMPT)
    assert a.token_ids == b.token_ids
    np.testing.assert_allclose(a.mask_logits[0], b.mask_logits[0], atol=1e-5, rtol=0)


def test_fixture_chat_second_turn_matches_the_rendered_conversation(fixture_segmenter):
    """On the real tokenizer: the cached second turn equals fresh decoding of the two-turn template string."""
    segmenter = fixture_segmenter
    model, processor = segmenter.model, segmenter.processor
    image = str(FIXTURE / "inputs" / "vessel.png")
    session = segmenter.chat(image)
    first = session.ask(PROMPT)
    second = session.ask("And the background?", max_new_tokens=8)
    rendered = processor.encode(processor.conversation_prompt([(PROMPT, first.text), ("And the background?", None)]))
    assert rendered == processor.encode(processor.conversation_prompt([(PROMPT, None)])) + first.token_ids + \
        processor.continuation_ids("And the background?")
    inputs = processor.preprocess_image(Image.open(image).convert("RGB"))
    ids = torch.tensor([rendered])
    with torch.no_grad():
        features = model.encode_images(inputs.pixel_values)
    spliced = model.splice_inputs(ids, torch.ones_like(ids), features, [0], padding_side="left")
    fresh = greedy_decode(model.decoder, model.get_output_embeddings(), model.get_input_embeddings(),
                          spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids, max_new_tokens=8,
                          eos_token_id=processor.eos_token_id, use_cache=False)
    assert fresh.new_ids[0] == second.token_ids


def _copy_checkpoint(source: Path, target: Path, edit_config=None, edit_tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    target.mkdir()
    for path in source.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            shutil.copy(path, target / path.name)
    config = json.loads((source / "config.json").read_text())
    tensors = load_file(str(source / "model.safetensors"))
    if edit_config:
        edit_config(config)
    if edit_tensors:
        tensors = edit_tensors(tensors, config)
    (target / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target / "model.safetensors"))
    return target


def test_internlm2_checkpoint_maps_onto_llama(fixture_checkpoint, fixture_segmenter, tmp_path):
    """The fixture's Qwen2 rewritten in InternLM2's layout (fused grouped wqkv, wo, w1/w2/w3, attention_norm, ...)
    loads onto transformers' LLaMA and answers identically."""
    from reasonseg.modeling.sa2va.internlm2 import fuse_wqkv

    def to_internlm2_config(config):
        llm = config["llm_config"]
        llm.update(architectures=["InternLM2ForCausalLM"], model_type="internlm2", bias=True, rope_scaling=None)

    def to_internlm2_tensors(tensors, config):
        llm = config["llm_config"]
        heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
        out = {}
        for key, value in tensors.items():
            if not key.startswith("language_model."):
                out[key] = value
                continue
            key = key.replace("model.embed_tokens", "model.tok_embeddings").replace("language_model.lm_head", "language_model.output")
            key = key.replace("input_layernorm", "attention_norm").replace("post_attention_layernorm", "ffn_norm")
            key = key.replace("mlp.gate_proj", "feed_forward.w1").replace("mlp.down_proj", "feed_forward.w2")
            key = key.replace("mlp.up_proj", "feed_forward.w3").replace("self_attn.o_proj", "attention.wo")
            if ".self_attn.q_proj." in key:
                leaf = key.rsplit(".", 1)[1]
                base = key.split(".self_attn.")[0]
                q, k, v = (tensors[key.replace("q_proj", n)] for n in ("q_proj", "k_proj", "v_proj"))
                out[f"{base}.attention.wqkv.{leaf}"] = fuse_wqkv(q, k, v, heads, kv_heads)
                if leaf == "weight":  # Qwen2 has no o_proj bias; InternLM2 with bias=True has a (zero) one
                    out[f"{base}.attention.wo.bias"] = torch.zeros(value.shape[1])
                continue
            if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
                continue
            out[key] = value
        return out

    source = _copy_checkpoint(fixture_checkpoint, tmp_path / "internlm2", to_internlm2_config, to_internlm2_tensors)
    internlm = Segmenter.from_pretrained(str(source), device="cpu")
    assert type(internlm.model.language_model).__name__ == "LlamaForCausalLM"
    image = str(FIXTURE / "inputs" / "shapes.png")
    prompt = "Segment the blue circle and the green square."
    a, b = fixture_segmenter.predict(image, prompt), internlm.predict(image, prompt)
    assert a.token_ids == b.token_ids and a.num_masks == b.num_masks == 2
    np.testing.assert_allclose(np.stack(a.mask_logits), np.stack(b.mask_logits), atol=1e-4, rtol=0)


def test_split_wqkv_inverts_fuse():
    from reasonseg.modeling.sa2va.internlm2 import fuse_wqkv, split_wqkv

    q, k, v = torch.randn(8 * 4, 16), torch.randn(2 * 4, 16), torch.randn(2 * 4, 16)
    fused = fuse_wqkv(q, k, v, 8, 2)
    assert fused.shape == (48, 16)
    # group g holds queries 4g..4g+3, then key g, then value g
    assert torch.equal(fused[:16], q[:16]) and torch.equal(fused[16:20], k[:4]) and torch.equal(fused[20:24], v[:4])
    for a, b in zip(split_wqkv(fused, 8, 2), (q, k, v)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------- errors
def _write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    "config, words",
    [
        ({"architectures": ["Sa2VAChatModelQwen"], "model_type": "sa2va_chat"}, ["Sa2VAChatModelQwen", "Sa2VAChatModel"]),
        ({"architectures": ["Sa2VAVideoThing"], "model_type": "sa2va_chat"}, ["Sa2VAVideoThing", "remote code"]),
        (
            {"architectures": ["Sa2VAChatModel"], "model_type": "sa2va_chat", "llm_config": {"architectures": ["GemmaForCausalLM"]}},
            ["GemmaForCausalLM", "Qwen2ForCausalLM", "InternLM2ForCausalLM"],
        ),
    ],
)
def test_unsupported_variants_name_themselves_and_what_is_supported(tmp_path, config, words):
    from reasonseg.errors import UnsupportedError

    directory = _write_config(tmp_path / "ckpt", config)
    with pytest.raises(UnsupportedError) as info:
        Segmenter.from_pretrained(str(directory), device="cpu")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words)


def test_cli_reports_unsupported_variant_in_one_line(tmp_path, capsys):
    from reasonseg.cli.main import main

    directory = _write_config(tmp_path / "ckpt", {"architectures": ["Sa2VAChatModelQwen"], "model_type": "sa2va_chat"})
    assert main(["convert", "--from-sa2va", str(directory), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "Sa2VAChatModelQwen" in err and len(err.splitlines()) == 1


def test_foreign_tensor_is_refused(fixture_checkpoint, tmp_path):
    from reasonseg.errors import CheckpointError

    def add_foreign(tensors, config):
        tensors["extra_head.weight"] = torch.zeros(2, 2)
        return tensors

    source = _copy_checkpoint(fixture_checkpoint, tmp_path / "foreign", edit_tensors=add_foreign)
    with pytest.raises(CheckpointError, match="extra_head.weight"):
        Segmenter.from_pretrained(str(source), device="cpu")


def test_missing_tensor_is_named(fixture_checkpoint, tmp_path):
    from reasonseg.errors import CheckpointError

    def drop(tensors, config):
        del tensors["text_hidden_fcs.2.weight"]
        return tensors

    source = _copy_checkpoint(fixture_checkpoint, tmp_path / "missing", edit_tensors=drop)
    with pytest.raises(CheckpointError, match="seg_projection.layers.2.weight"):
        Segmenter.from_pretrained(str(source), device="cpu")


def test_unmerged_lora_is_refused(fixture_checkpoint, tmp_path):
    from reasonseg.errors import UnsupportedError

    source = _copy_checkpoint(fixture_checkpoint, tmp_path / "lora", lambda c: c.update(use_llm_lora=128))
    with pytest.raises(UnsupportedError, match="LoRA"):
        Segmenter.from_pretrained(str(source), device="cpu")


def test_remote_code_tokenizer_is_not_run(fixture_checkpoint, tmp_path):
    from reasonseg.errors import CheckpointError

    source = _copy_checkpoint(fixture_checkpoint, tmp_path / "remote")
    (source / "tokenizer.json").unlink()
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="InternLM2Tokenizer", auto_map={"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]})
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    (source / "tokenization_internlm2.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(CheckpointError, match="remote code") as info:
        Segmenter.from_pretrained(str(source), device="cpu")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------- Sa2VA layout
def test_fixture_names_round_trip(fixture_checkpoint, fixture_segmenter):
    """native -> Sa2VA names gives back every tensor of the original file except SAM2's video-memory parts."""
    from reasonseg.checkpoints.sa2va import SAM2_VIDEO_ONLY, SAM_PREFIX, native_items_to_sa2va
    from reasonseg.checkpoints.state_dicts import iter_checkpoint_tensors

    model = fixture_segmenter.model
    original = dict(iter_checkpoint_tensors(fixture_checkpoint))
    back = dict(native_items_to_sa2va(model.state_dict().items(), model.config))
    video_only = {k for k in original if k.startswith(SAM_PREFIX) and k[len(SAM_PREFIX):].startswith(SAM2_VIDEO_ONLY)}
    assert set(back) == set(original) - video_only
    for key, value in back.items():
        assert torch.equal(value.float(), original[key].float()), key


def test_sharded_sa2va_layout_of_a_tiny_model_loads_back(tiny_sa2va, wide_image, tmp_path):
    """A Sa2VA-layout checkpoint (sharded, InternViT qkv fused, SAM2 original names, shape read off the tensors)
    written from a tiny model loads to the same weights and answers; no fixture needed."""
    from reasonseg.checkpoints.sa2va import save_sa2va_layout
    from reasonseg.modeling.sa2va.tiny import tiny_sam2_hints

    model, processor = tiny_sa2va
    directory = save_sa2va_layout(model.state_dict().items(), model.config, processor.tokenizer, tmp_path / "raw",
                                  tiny_sam2_hints(), shard_bytes=200_000)
    assert len(list(directory.glob("model-*.safetensors"))) > 2
    loaded = Segmenter.from_pretrained(str(directory), device="cpu")
    assert loaded.processor.settings.tile_size == 448  # Sa2VA's hard-coded tiling ...
    loaded.processor.settings.tile_size, loaded.processor.settings.max_tiles = 56, 4  # ... this tiny model's
    loaded.processor.settings.sam_image_size = 256
    expected, got = model.state_dict(), loaded.model.state_dict()
    assert set(expected) == set(got)
    for key in expected:
        assert torch.equal(expected[key].float(), got[key].float()), key
    a = Segmenter(model, processor).predict(wide_image, PROMPT, max_new_tokens=5, force_seg=True)
    b = loaded.predict(wide_image, PROMPT, max_new_tokens=5, force_seg=True)
    assert a.token_ids == b.token_ids
    np.testing.assert_allclose(a.mask_logits[0], b.mask_logits[0], atol=1e-5, rtol=0)
