"""Model and processor variants beside the default tiny model: a SigLIP tower with a linear projector, image
start/end tokens, and the llava_llama_2 template."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor

from reasonseg import Segmenter
from reasonseg.errors import InputError
from reasonseg.modeling.modeling_reasonseg import ReasonSegForCausalLM
from reasonseg.modeling.tiny import build_tiny_tokenizer, tiny_config
from reasonseg.processing.conversation import IMAGE_END_TOKEN, IMAGE_START_TOKEN
from reasonseg.processing.processing_reasonseg import ProcessorSettings, ReasonSegProcessor
from reasonseg.processing.tokenization import add_tokens

SIGLIP = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, image_size=56, patch_size=14)


def _segmenter(settings: ProcessorSettings, extra_tokens=(), **overrides) -> Segmenter:
    tokenizer = build_tiny_tokenizer()
    add_tokens(tokenizer, list(extra_tokens))
    torch.manual_seed(0)
    config = tiny_config(len(tokenizer), tokenizer.convert_tokens_to_ids("[SEG]"), **overrides)
    model = ReasonSegForCausalLM(config).eval()
    image_processor = CLIPImageProcessor(size={"height": 56, "width": 56}, do_center_crop=False)
    return Segmenter(model, ReasonSegProcessor(tokenizer, image_processor, settings))


def test_siglip_tower_with_linear_projector_keeps_every_patch_and_round_trips(rgb_image, tmp_path):
    settings = ProcessorSettings(tokenizer_style="default")
    segmenter = _segmenter(settings, vision_config=SIGLIP, projector_type="linear",
                           vision_feature_select_strategy="full")
    model = segmenter.model
    assert type(model.vision_tower).__name__ == "SiglipVisionModel"
    assert isinstance(model.multi_modal_projector, torch.nn.Linear) or any(
        isinstance(m, torch.nn.Linear) for m in model.multi_modal_projector.modules())
    pixels = segmenter.processor.preprocess_image(rgb_image).pixel_values
    assert model.encode_images(pixels).shape == (1, (56 // 14) ** 2, 64)  # no CLS to drop
    first = segmenter.predict(rgb_image, "the circle", max_new_tokens=4, force_seg=True)
    model.save_pretrained(tmp_path)
    segmenter.processor.save_pretrained(tmp_path)
    again = Segmenter.from_pretrained(str(tmp_path)).predict(rgb_image, "the circle", max_new_tokens=4, force_seg=True)
    assert first.token_ids == again.token_ids and len(first.masks) == 1
    np.testing.assert_allclose(first.mask_logits[0], again.mask_logits[0], atol=1e-5)


def test_image_start_and_end_tokens_surround_the_image_features(rgb_image):
    settings = ProcessorSettings(tokenizer_style="default", use_im_start_end=True)
    segmenter = _segmenter(settings, extra_tokens=[IMAGE_START_TOKEN, IMAGE_END_TOKEN])
    processor = segmenter.processor
    ids = processor.encode(processor.conversation_prompt([("the circle", None)]))
    start, end = (processor.tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_START_TOKEN, IMAGE_END_TOKEN))
    at = ids.index(segmenter.model.config.image_token_index)
    assert ids[at - 1] == start and ids[at + 1] == end and ids.count(start) == 1
    prediction = segmenter.predict(rgb_image, "the circle", max_new_tokens=4, force_seg=True)
    assert len(prediction.masks) == 1 and prediction.masks[0].shape == (rgb_image.height, rgb_image.width)


def test_llava_llama_2_template_renders_and_continues(rgb_image):
    settings = ProcessorSettings(tokenizer_style="default", conv_type="llava_llama_2")
    segmenter = _segmenter(settings)
    text = segmenter.processor.conversation_prompt([("the circle", None)])
    assert text.startswith("[INST] <<SYS>>\n") and text.endswith("the circle [/INST]") and "<image>\n" in text
    continuation = segmenter.processor.continuation_ids("and the square?")
    assert segmenter.processor.tokenizer.decode(continuation) == "<s>[INST] and the square? [/INST]"
    chat = segmenter.chat(rgb_image)
    chat.ask("the circle", max_new_tokens=3)
    second = chat.ask("and the square?", max_new_tokens=3, force_seg=True)
    assert len(second.masks) == 1 and second.seg_forced in (True, False)


def test_image_after_text_puts_the_image_features_after_the_question_and_refuses_other_placements(rgb_image):
    segmenter = _segmenter(ProcessorSettings(tokenizer_style="default", image_placement="after_text"))
    processor = segmenter.processor
    prompt = processor.conversation_prompt([("the circle", None)])
    assert "the circle\n<image>" in prompt and prompt.count("<image>") == 1
    ids = processor.encode(prompt)
    at = ids.index(segmenter.model.config.image_token_index)
    assert processor.encode(prompt[: prompt.index("<image>")]) == ids[:at]  # the whole question comes first
    written = processor.conversation_prompt([("<image>\nthe circle", None)])  # a user-placed image stays put
    assert written.index("<image>") < written.index("the circle")
    prediction = segmenter.predict(rgb_image, "the circle", max_new_tokens=4, force_seg=True)
    assert len(prediction.masks) == 1
    with pytest.raises(InputError, match="image_placement 'below'"):
        ReasonSegProcessor(processor.tokenizer, processor.image_processor, ProcessorSettings(image_placement="below"))
