"""`reasonseg build` and LISA training outputs: tiny parts built from configs, saved here in every source layout.

Layouts of the vision-language model: an original LLaVA checkpoint (LLaMA keys + ``model.mm_projector``, sharded
``.bin``, CLIP named by ``mm_vision_tower``), a transformers ``LlavaForConditionalGeneration``, and a plain causal LM
with a separate CLIP tower. SAM: an original segment-anything ``.pth`` and a transformers ``SamModel`` directory.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    SamConfig,
    SamModel,
)

import reasonseg  # noqa: F401  (registers the Auto classes)
from reasonseg.checkpoints.build import build_checkpoint, build_model
from reasonseg.checkpoints.delta import apply_delta
from reasonseg.checkpoints.lisa_training import convert_lisa_training_weights, merge_lora_state_dict
from reasonseg.checkpoints.sam_keys import rename_sam_key, segment_anything_key
from reasonseg.cli.main import main as cli_main
from reasonseg.errors import CheckpointError, InputError, UnsupportedError
from reasonseg.modeling.sam import decode_seg_masks

VOCAB = 300
SEED_TEXT = [
    "A chat between a curious human and an artificial intelligence assistant. USER: ASSISTANT:",
    "What is in this image? Please output segmentation mask. Sure, it is the blood vessel.",
]


# ---------------------------------------------------------------------------------------------------------------
# tiny parts


def make_tokenizer(extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", *extra_special]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(SEED_TEXT * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )


def vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )


def text_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, initializer_range=0.1,
    )


def sam_config() -> SamConfig:
    # segment-anything's fixed choices where the tensors do not show them: 8 decoder heads, LayerNorm eps 1e-5
    return SamConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1], output_channels=64,
            mlp_dim=64, num_pos_feats=32, initializer_range=0.1,
        ),
        prompt_encoder_config=dict(hidden_size=64),
        mask_decoder_config=dict(hidden_size=64, mlp_dim=128, num_attention_heads=8, layer_norm_eps=1e-5),
    )


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere (transformers initialises norms to 1 and biases to 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1 + (parameter == 1).float())
    return module.eval()


def to_segment_anything(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SamModel names -> segment-anything names, checked to map back exactly."""
    out = {}
    for key, value in state.items():
        original = segment_anything_key(key)
        if original is None:
            continue
        assert rename_sam_key(original) == key, (key, original)
        out[original] = value
    return out


def save_sharded_bin(state: dict[str, torch.Tensor], directory, shards: int = 2) -> None:
    keys = list(state)
    weight_map = {}
    for index in range(shards):
        name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[index::shards]}
        torch.save(part, directory / name)
        weight_map.update({k: name for k in part})
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Every part, saved in every layout. Returns a dict of paths and the in-memory reference modules."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    clip = randomize(CLIPVisionModel(vision_config()), 1)
    clip.save_pretrained(root / "clip")
    image_processor().save_pretrained(root / "clip")
    llama = randomize(LlamaForCausalLM(text_config(len(tokenizer))), 2)
    projector = randomize(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)), 3)

    # original LLaVA: LLaMA keys + model.mm_projector, two .bin shards, CLIP named by mm_vision_tower
    llava_dir = root / "llava"
    llava_dir.mkdir()
    state = dict(llama.state_dict())
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    save_sharded_bin(state, llava_dir)
    config = text_config(len(tokenizer)).to_dict()
    config.update(
        architectures=["LlavaLlamaForCausalLM"], model_type="llava", mm_vision_tower=str(root / "clip"),
        mm_hidden_size=32, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_use_im_start_end=True, torch_dtype="float32",
    )
    (llava_dir / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(llava_dir)

    # transformers LlavaForConditionalGeneration (llava-hf layout); <image> is in its vocabulary
    hf_tokenizer = make_tokenizer(("<image>",))
    hf = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision_config(), text_config=text_config(len(hf_tokenizer)),
                    image_token_id=hf_tokenizer.convert_tokens_to_ids("<image>"))
    )
    randomize(hf, 4)
    hf.save_pretrained(root / "llava_hf")
    hf_tokenizer.save_pretrained(root / "llava_hf")
    image_processor().save_pretrained(root / "llava_hf")

    # a plain causal LM
    llama.save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")

    # SAM in both formats
    sam = randomize(SamModel(sam_config()), 5)
    sam.save_pretrained(root / "sam_hf")
    torch.save(to_segment_anything(sam.state_dict()), root / "sam_vit_tiny.pth")
    return dict(root=root, tokenizer=tokenizer, clip=clip, llama=llama, projector=projector, hf=hf, sam=sam,
                hf_tokenizer=hf_tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# what "equal to the parts" means


def check_vision_side(model, clip, projector) -> None:
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        if projector is not None:
            expected = projector(expected)
            torch.testing.assert_close(model.encode_images(pixels), expected, atol=0, rtol=0)
        else:
            got = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def check_text_side(model, embed, head, language_model, vocab: int, atol: float = 0.0) -> None:
    torch.testing.assert_close(model.get_input_embeddings().weight[:vocab], embed, atol=atol, rtol=0)
    torch.testing.assert_close(model.get_output_embeddings().weight[:vocab], head, atol=atol, rtol=0)
    ids = torch.randint(0, vocab, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = language_model(input_ids=ids).logits
        got = model.language_model(input_ids=ids).logits[..., :vocab]
    torch.testing.assert_close(got, expected, atol=max(atol, 1e-6) * 10, rtol=1e-5)


def check_sam_side(model, sam) -> None:
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    prompts = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = sam.get_image_embeddings(pixels)
        got = model.encode_sam_images(pixels)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
        expected_masks = decode_seg_masks(sam, expected, prompts, "first")
        got_masks = decode_seg_masks(model.sam, got, prompts, "first")
    for a, b in zip(got_masks, expected_masks):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# build from each layout and each SAM format


@pytest.mark.parametrize("sam_format", ["pth", "hf"])
def test_build_from_original_llava(parts, sam_format):
    root = parts["root"]
    sam = root / ("sam_vit_tiny.pth" if sam_format == "pth" else "sam_hf")
    model, processor, report = build_model(root / "llava", sam)
    assert report.vlm_layout == "llava" and report.use_im_start_end
    vocab = len(parts["tokenizer"])
    # [SEG] first, then the image start/end tokens, as LISA adds them; ids read from the vocabulary
    assert report.added_tokens == {"[SEG]": vocab, "<im_start>": vocab + 1, "<im_end>": vocab + 2}
    assert model.config.seg_token_id == processor.seg_token_id == vocab
    assert model.get_input_embeddings().weight.shape[0] == vocab + 3 == model.config.text_config.vocab_size
    llama = parts["llama"]
    check_vision_side(model, parts["clip"], parts["projector"])
    check_text_side(model, llama.model.embed_tokens.weight, llama.lm_head.weight, llama, vocab)
    check_sam_side(model, parts["sam"])
    assert processor.settings.use_im_start_end and processor.settings.conv_type == "llava_v1"
    assert processor.settings.tokenizer_style == "default"


def test_build_from_llava_hf(parts):
    root = parts["root"]
    model, processor, report = build_model(root / "llava_hf", root / "sam_hf")
    assert report.vlm_layout == "llava_hf" and not report.use_im_start_end
    hf = parts["hf"]
    vocab = len(parts["hf_tokenizer"])
    assert report.added_tokens == {"[SEG]": vocab}
    projector = torch.nn.Sequential(hf.model.multi_modal_projector.linear_1, torch.nn.GELU(),
                                    hf.model.multi_modal_projector.linear_2)
    check_vision_side(model, hf.model.vision_tower, projector)
    with torch.no_grad():
        pixels = torch.randn(1, 3, 56, 56)
        reference = hf.model.get_image_features(pixels)
        reference = reference.pooler_output if hasattr(reference, "pooler_output") else reference
        reference = torch.cat(list(reference)) if isinstance(reference, (list, tuple)) else reference
        torch.testing.assert_close(model.encode_images(pixels).reshape(reference.shape), reference, atol=1e-6, rtol=0)
    language = LlamaForCausalLM(hf.config.text_config)
    language.model, language.lm_head = hf.model.language_model, hf.lm_head
    check_text_side(model, hf.model.language_model.embed_tokens.weight, hf.lm_head.weight, language.eval(), vocab)
    check_sam_side(model, parts["sam"])


def test_build_from_plain_causal_lm_with_vision_tower(parts, tmp_path):
    root = parts["root"]
    out, report = build_checkpoint(root / "llama", root / "sam_vit_tiny.pth", tmp_path / "built",
                                   vision_tower=str(root / "clip"))
    assert report.vlm_layout == "causal_lm" and "multi_modal_projector" in report.new_parts
    assert any("projector is new" in note for note in report.notes)
    info = json.loads((out / "build_info.json").read_text())
    assert info["sam_format"] == "segment_anything" and info["added_tokens"]["[SEG]"] == len(parts["tokenizer"])
    from reasonseg.checkpoints.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(out), device="cpu")
    llama = parts["llama"]
    check_vision_side(model, parts["clip"], None)
    check_text_side(model, llama.model.embed_tokens.weight, llama.lm_head.weight, llama, len(parts["tokenizer"]))
    check_sam_side(model, parts["sam"])
    # without a tower the error says what to pass
    with pytest.raises(InputError, match="--vision-tower"):
        build_model(root / "llama", root / "sam_hf")


def test_seg_token_takes_the_space_before_it_and_answers_decode_with_it(parts, tmp_path):
    out, _ = build_checkpoint(parts["root"] / "llava_hf", parts["root"] / "sam_hf", tmp_path / "built")
    from reasonseg.checkpoints.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(out), device="cpu")
    tokenizer = processor.tokenizer
    seg_id = model.config.seg_token_id
    with_seg = tokenizer.encode("It is at (3, 6) [SEG].", add_special_tokens=False)
    without = tokenizer.encode("It is at (3, 6).", add_special_tokens=False)
    # as under LISA's tokenizer: no lone space token between ")" and [SEG], one token more than the answer without it
    assert with_seg == without[:-1] + [seg_id] + without[-1:]
    assert processor.decode(with_seg) == "It is at (3, 6) [SEG]."
    assert processor.decode(tokenizer.encode("[SEG] and [SEG]", add_special_tokens=False)) == "[SEG] and [SEG]"


@pytest.mark.slow
def test_cli_build_writes_a_loadable_checkpoint_and_auto_classes_load_it(parts, tmp_path, capsys):
    root = parts["root"]
    out = tmp_path / "cli_built"
    code = cli_main(["build", "--vlm", str(root / "llava"), "--sam", str(root / "sam_hf"), "--out", str(out),
                     "--conv-type", "llava_llama_2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[SEG]" in printed and str(out) in printed
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "reasonseg" and config.seg_token_id == len(parts["tokenizer"])
    for auto in (AutoModel, AutoModelForCausalLM):
        assert type(auto.from_pretrained(out)).__name__ == "ReasonSegForCausalLM"
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "ReasonSegProcessor"
    assert processor.settings.conv_type == "llava_llama_2" and processor.seg_token_id == config.seg_token_id
    # a second build into the same directory is refused before any loading
    code = cli_main(["build", "--vlm", str(root / "llava"), "--sam", str(root / "sam_hf"), "--out", str(out)])
    assert code == 1 and "not empty" in capsys.readouterr().err
    # in a fresh interpreter, `import reasonseg` before transformers is all it takes
    script = (
        "import reasonseg, sys\n"
        "from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor\n"
        f"path = {str(out)!r}\n"
        "print(AutoConfig.from_pretrained(path).model_type, type(AutoModelForCausalLM.from_pretrained(path)).__name__,"
        " type(AutoProcessor.from_pretrained(path)).__name__)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.stdout.split() == ["reasonseg", "ReasonSegForCausalLM", "ReasonSegProcessor"], completed.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# deltas


@pytest.fixture(scope="module")
def delta_parts(parts):
    """A LLaVA-style delta of the original-LLaVA part against a base LLaMA whose vocabulary is 3 rows smaller."""
    root = parts["root"]
    target = parts["llama"].state_dict()
    vocab = len(parts["tokenizer"])
    base_vocab = vocab - 3
    generator = torch.Generator().manual_seed(7)
    base = {k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in target.items()}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        base[key] = base[key][:base_vocab].clone()
    base_model = LlamaForCausalLM(text_config(base_vocab))
    base_model.load_state_dict(base)
    base_model.save_pretrained(root / "base_llama")  # safetensors, as on the hub today
    delta = {}
    for key, value in target.items():
        delta[key] = value.clone()
        rows = base[key].shape[0] if key in ("model.embed_tokens.weight", "lm_head.weight") else None
        if rows is None:
            delta[key] -= base[key]
        else:
            delta[key][:rows] -= base[key]
    delta.update({f"model.mm_projector.{k}": v for k, v in parts["projector"].state_dict().items()})
    delta_dir = root / "llava_delta"
    delta_dir.mkdir()
    save_sharded_bin(delta, delta_dir, shards=3)
    config = json.loads((root / "llava" / "config.json").read_text())
    (delta_dir / "config.json").write_text(json.dumps(config))
    parts["tokenizer"].save_pretrained(delta_dir)
    return dict(base=base, delta=delta, base_dir=root / "base_llama", delta_dir=delta_dir, base_vocab=base_vocab)


def test_delta_equals_base_plus_delta_tensor_by_tensor(delta_parts):
    applied = apply_delta(delta_parts["base_dir"], delta_parts["delta_dir"])
    base, delta = delta_parts["base"], delta_parts["delta"]
    assert set(applied) == set(delta)
    for key, value in applied.items():
        if key.startswith("model.mm_projector."):
            torch.testing.assert_close(value, delta[key], atol=0, rtol=0)
        elif key in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = delta_parts["base_vocab"]
            torch.testing.assert_close(value[:rows], delta[key][:rows] + base[key], atol=0, rtol=0)
            torch.testing.assert_close(value[rows:], delta[key][rows:], atol=0, rtol=0)  # grown rows: the delta's
        else:
            torch.testing.assert_close(value, delta[key] + base[key], atol=0, rtol=0)


def test_build_with_delta_equals_the_target(parts, delta_parts):
    model, _, report = build_model(delta_parts["base_dir"], parts["root"] / "sam_vit_tiny.pth",
                                   delta=delta_parts["delta_dir"])
    assert report.delta and report.vlm_layout == "llava"
    llama = parts["llama"]
    vocab = len(parts["tokenizer"])
    # (target - base) + base is the target up to float rounding; the exact rule is checked tensor by tensor above
    check_text_side(model, llama.model.embed_tokens.weight, llama.lm_head.weight, llama, vocab, atol=1e-6)
    check_vision_side(model, parts["clip"], parts["projector"])


def test_delta_of_another_base_is_refused_by_name(parts, delta_parts, tmp_path):
    wrong = LlamaForCausalLM(LlamaConfig(**{**text_config(delta_parts["base_vocab"]).to_dict(), "intermediate_size": 96}))
    wrong.save_pretrained(tmp_path / "wrong_base")
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight"):
        apply_delta(tmp_path / "wrong_base", delta_parts["delta_dir"])


# ---------------------------------------------------------------------------------------------------------------
# bad inputs


class NotATensor:
    pass


def test_pth_with_anything_but_tensors_is_refused(parts, tmp_path):
    sam_state = torch.load(parts["root"] / "sam_vit_tiny.pth", weights_only=True)
    with_code = tmp_path / "sam_with_object.pth"
    torch.save({**sam_state, "extra": NotATensor()}, with_code)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        build_model(parts["root"] / "llava", with_code)
    with_strings = tmp_path / "sam_with_strings.pth"
    torch.save({**sam_state, "note": "hello"}, with_strings)
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        build_model(parts["root"] / "llava", with_strings)
    plain_pickle = tmp_path / "pickled.pth"
    plain_pickle.write_bytes(pickle.dumps({"a": NotATensor()}))
    with pytest.raises(CheckpointError):
        build_model(parts["root"] / "llava", plain_pickle)


def test_wrong_inputs_are_one_line_errors(parts, tmp_path):
    root = parts["root"]
    with pytest.raises(CheckpointError, match="not a segment-anything checkpoint"):
        torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
        build_model(root / "llava", tmp_path / "other.pth")
    with pytest.raises(InputError, match="llava_hf.*has its own|has its own"):
        build_model(root / "llava_hf", root / "sam_hf", vision_tower=str(root / "clip"))
    with pytest.raises(InputError, match="unknown conversation template"):
        build_model(root / "llava", root / "sam_hf", conv_type="vicuna")
    # a saved model of another kind, or a corrupt config.json, passed as the SAM
    with pytest.raises(UnsupportedError, match="holds a 'llava' model, not a SAM; pass a SAM"):
        build_model(root / "llava", root / "llava_hf")
    (tmp_path / "corrupt_sam").mkdir()
    (tmp_path / "corrupt_sam" / "config.json").write_text("{not json")
    with pytest.raises(UnsupportedError, match=r"config.json is not valid JSON \(.*\); pass a SAM"):
        build_model(root / "llava", tmp_path / "corrupt_sam")
    # a LLaVA handed to the loaders (e.g. as a training run's model) points at `reasonseg build`
    from reasonseg.checkpoints.loading import load_model_and_processor

    for vlm in ("llava", "llava_hf"):
        with pytest.raises(CheckpointError, match="reasonseg build --vlm"):
            load_model_and_processor(str(root / vlm), device="cpu")
    with pytest.raises(InputError, match="already a reasonseg model"):
        build_model(_native_dir(tmp_path), root / "sam_hf")


def test_a_wrong_sam_is_refused_before_the_language_model_loads(parts, monkeypatch):
    import reasonseg.checkpoints.build as build

    def no_language_model(*args, **kwargs):
        raise AssertionError("the language model was loaded before --sam was checked")

    for loader in ("_llava_parts", "_llava_hf_parts", "_causal_lm_parts"):
        monkeypatch.setattr(build, loader, no_language_model)
    for vlm in ("llava", "llava_hf"):
        with pytest.raises(UnsupportedError, match="holds a 'llava' model, not a SAM"):
            build_model(parts["root"] / vlm, parts["root"] / "llava_hf")


def _native_dir(tmp_path):
    from reasonseg.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model()
    model.save_pretrained(tmp_path / "native")
    processor.save_pretrained(tmp_path / "native")
    return tmp_path / "native"


# ---------------------------------------------------------------------------------------------------------------
# LISA training outputs (zero_to_fp32.py's pytorch_model.bin: LoRA unmerged, peft's prefix)


def to_lisa_names(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reasonseg state dict -> LISA's LISAForCausalLM names (the inverse of reasonseg.checkpoints.lisa)."""
    out, sam = {}, {}
    for key, value in native.items():
        if key.startswith("sam."):
            sam[key[len("sam."):]] = value
            continue
        for pattern, replacement in (
            (r"^language_model\.model\.", "model."),
            (r"^language_model\.lm_head\.", "lm_head."),
            (r"^multi_modal_projector\.", "model.mm_projector."),
            (r"^seg_projection\.layers\.", "model.text_hidden_fcs.0."),
            (r"^vision_tower\.", "model.vision_tower.vision_tower.vision_model."),
        ):
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        out[key] = value
    out.update({f"model.visual_model.{k}": v for k, v in to_segment_anything(sam).items()})
    return out


def lisa_training_state(reference, peft_layout: str = "0.4", rank: int = 8, seed: int = 11):
    """(state dict as LISA's training leaves it, expected merged native state dict) for a reference model."""
    native = {k: v.clone() for k, v in reference.state_dict().items()}
    lisa = to_lisa_names(native)
    generator = torch.Generator().manual_seed(seed)
    expected = dict(native)
    state = {}
    for key, value in lisa.items():
        match = re.match(r"^(model\.layers\.\d+\.self_attn\.[qv]_proj)\.weight$", key)
        if not match:
            state[f"base_model.model.{key}"] = value
            continue
        module = match.group(1)
        lora_a = torch.randn(rank, value.shape[1], generator=generator) * 0.1
        lora_b = torch.randn(value.shape[0], rank, generator=generator) * 0.1
        adapter = ".default" if peft_layout in ("0.4", "new") else ""
        weight_key = f"{module}.base_layer.weight" if peft_layout == "new" else f"{module}.weight"
        state[f"base_model.model.{weight_key}"] = value
        state[f"base_model.model.{module}.lora_A{adapter}.weight"] = lora_a
        state[f"base_model.model.{module}.lora_B{adapter}.weight"] = lora_b
        native_key = "language_model." + key
        expected[native_key] = value + (lora_b @ lora_a) * (16 / rank)
    state["base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # transformers 4.31 kept it
    return state, expected


@pytest.fixture(scope="module")
def lisa_reference(parts):
    """A reasonseg model built from the original-LLaVA part (as LISA's training starts from it), SAM from .pth."""
    model, _, _ = build_model(parts["root"] / "llava", parts["root"] / "sam_vit_tiny.pth")
    return model


def load_native_state(directory) -> dict[str, torch.Tensor]:
    from reasonseg.checkpoints.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(directory), device="cpu")
    return model, processor


@pytest.mark.parametrize("peft_layout", ["0.4", "new", "old"])
def test_lisa_training_weights_convert_and_match_merging_by_hand(parts, lisa_reference, tmp_path, peft_layout):
    state, expected = lisa_training_state(lisa_reference, peft_layout)
    torch.save(state, tmp_path / "pytorch_model.bin")
    out = convert_lisa_training_weights(tmp_path / "pytorch_model.bin", parts["root"] / "llava", tmp_path / "out",
                                        precision="fp32")
    model, processor = load_native_state(out)
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-6, msg=key)
    assert processor.seg_token_id == model.config.seg_token_id == len(parts["tokenizer"])
    assert processor.settings.use_im_start_end


def test_lisa_training_merge_equals_peft(lisa_reference):
    """The by-hand rule is peft's merge_and_unload."""
    from peft import LoraConfig, get_peft_model

    from reasonseg.training.model_setup import language_lora_pattern

    state, _ = lisa_training_state(lisa_reference, "new")
    merged = merge_lora_state_dict(
        {k[len("base_model.model."):]: v for k, v in state.items()}, lora_alpha=16, lora_r=8
    )
    reference = build_like(lisa_reference)
    peft_model = get_peft_model(reference, LoraConfig(r=8, lora_alpha=16, target_modules=language_lora_pattern(["q_proj", "v_proj"])))
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                lisa_module = "model." + name.split("language_model.model.", 1)[1]
                module.lora_A["default"].weight.copy_(state[f"base_model.model.{lisa_module}.lora_A.default.weight"])
                module.lora_B["default"].weight.copy_(state[f"base_model.model.{lisa_module}.lora_B.default.weight"])
    unloaded = peft_model.merge_and_unload()
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            key = f"model.layers.{layer}.self_attn.{proj}.weight"
            torch.testing.assert_close(merged[key], unloaded.state_dict()["language_model." + key], atol=1e-6, rtol=0)


def build_like(model):
    import copy

    return copy.deepcopy(model)


def test_lisa_training_weights_bad_keys_are_named(parts, lisa_reference, tmp_path):
    llava = parts["root"] / "llava"
    state, _ = lisa_training_state(lisa_reference)
    cases = {
        "missing": ({k: v for k, v in state.items() if not k.endswith("mask_decoder.iou_token.weight")}, "iou_token"),
        "unexpected": ({**state, "base_model.model.model.extra_head.weight": torch.zeros(2)}, "model.extra_head.weight"),
        "half_lora": ({k: v for k, v in state.items() if "layers.1.self_attn.v_proj.lora_B" not in k},
                      "layers.1.self_attn.v_proj"),
    }
    for name, (bad, expected_name) in cases.items():
        torch.save(bad, tmp_path / f"{name}.bin")
        with pytest.raises(CheckpointError, match=re.escape(expected_name)):
            convert_lisa_training_weights(tmp_path / f"{name}.bin", llava, tmp_path / f"out_{name}")
    torch.save(state, tmp_path / "good.bin")
    with pytest.raises(CheckpointError, match="rank in the state dict is 8, not --lora-r 16"):
        convert_lisa_training_weights(tmp_path / "good.bin", llava, tmp_path / "out_rank", lora_r=16)
    with pytest.raises(CheckpointError, match=r"unexpected LoRA on model\.layers\.0\.self_attn\.q_proj"):
        convert_lisa_training_weights(tmp_path / "good.bin", llava, tmp_path / "out_targets", lora_targets=["v_proj"])
    # a pickle holding code is refused before anything is built
    torch.save({**state, "optimizer": NotATensor()}, tmp_path / "with_code.bin")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        convert_lisa_training_weights(tmp_path / "with_code.bin", llava, tmp_path / "out_code")


def test_cli_convert_from_lisa_weights(parts, lisa_reference, tmp_path, capsys):
    state, expected = lisa_training_state(lisa_reference)
    torch.save(state, tmp_path / "pytorch_model.bin")
    code = cli_main(["convert", "--from-lisa-weights", str(tmp_path / "pytorch_model.bin"), "--vlm",
                     str(parts["root"] / "llava"), "--out", str(tmp_path / "out"), "--lora-r", "8", "--lora-alpha", "16",
                     "--lora-targets", "q_proj,v_proj"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    model, _ = load_native_state(tmp_path / "out")
    key = "language_model.model.layers.1.self_attn.q_proj.weight"
    # saved in bf16 by default, as LISA's merge script does
    torch.testing.assert_close(model.state_dict()[key], expected[key].to(torch.bfloat16).float(), atol=0, rtol=0)
    assert cli_main(["convert", "--from-lisa-weights", str(tmp_path / "pytorch_model.bin"), "--out", str(tmp_path / "x")]) == 1
    assert "needs --vlm" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# a built model trains and exports; training also starts from an original LISA checkpoint


def write_custom_dataset(folder) -> None:
    rng = np.random.RandomState(0)
    lines = []
    for index in range(3):
        image = np.full((48, 64, 3), 40, np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        y, x = rng.randint(4, 28, 2)
        image[y : y + 14, x : x + 20] = [200, 30, 40]
        mask[y : y + 14, x : x + 20] = 255
        Image.fromarray(image).save(folder / f"image{index}.png")
        Image.fromarray(mask).save(folder / f"mask{index}.png")
        lines.append(json.dumps({"image": f"image{index}.png", "mask": f"mask{index}.png", "prompt": "blood vessel"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")


def short_training(model_path, folder, run: str, steps: int):
    from reasonseg.training.config import load_training_config

    return load_training_config(None, [
        f"model={model_path}", f"output_dir={folder / run}",
        f"datasets=[{{kind: custom, path: {folder / 'data.jsonl'}}}]",
        "batch_size=1", "conversations_per_image=1", "warmup_steps=1", "lr=0.001", "log_every=1000",
        f"steps_per_epoch={steps}", f"save_every={steps}",
    ])


@pytest.mark.slow
def test_built_model_trains_and_exports(parts, tmp_path):
    from reasonseg import Segmenter
    from reasonseg.training.export import export_run
    from reasonseg.training.trainer import train

    root = parts["root"]
    built, _ = build_checkpoint(root / "llava", root / "sam_vit_tiny.pth", tmp_path / "built")
    write_custom_dataset(tmp_path)
    run = train(short_training(built, tmp_path, "run", 3), progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) and r["mask_bce"] > 0 for r in log)
    exported = export_run(run, tmp_path / "exported")
    segmenter = Segmenter.from_pretrained(str(exported), device="cpu")
    before, _ = load_native_state(built)
    after = segmenter.model
    # frozen parts unchanged, trained parts moved from where the build put them
    torch.testing.assert_close(after.sam.vision_encoder.patch_embed.projection.weight,
                               before.sam.vision_encoder.patch_embed.projection.weight, atol=0, rtol=0)
    assert not torch.equal(after.seg_projection.layers[0].weight, before.seg_projection.layers[0].weight)
    seg = after.config.seg_token_id
    assert not torch.equal(after.get_input_embeddings().weight[seg], before.get_input_embeddings().weight[seg])
    torch.testing.assert_close(after.get_input_embeddings().weight[:seg], before.get_input_embeddings().weight[:seg],
                               atol=0, rtol=0)
    prediction = segmenter.predict(str(tmp_path / "image0.png"), "Please segment the blood vessel.", 4, force_seg=True)
    assert prediction.masks and prediction.masks[0].shape == (48, 64)


@pytest.mark.slow
def test_training_starts_from_an_original_lisa_checkpoint_and_keeps_its_mask_side(lisa_fixture, tmp_path):
    from reasonseg.checkpoints.lisa import load_lisa_checkpoint
    from reasonseg.training.trainer import STATE_FILE, train

    write_custom_dataset(tmp_path)
    config = short_training(lisa_fixture, tmp_path, "run", 1)
    config.lr = 1e-12  # one step that barely moves: what training starts from is visible in the checkpoint
    run = train(config, progress=False)
    trained = torch.load(run / "checkpoint-1" / STATE_FILE, weights_only=True)["trainable"]
    lisa, _ = load_lisa_checkpoint(lisa_fixture)
    decoder = next(k for k in trained if k.endswith("sam.mask_decoder.iou_token.weight"))
    projection = next(k for k in trained if k.endswith("seg_projection.layers.2.weight"))
    torch.testing.assert_close(trained[decoder], lisa.sam.mask_decoder.iou_token.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(trained[projection], lisa.seg_projection.layers[2].weight, atol=1e-6, rtol=0)


def test_stage_info_of_a_pretrained_vlm_is_read_and_a_corrupt_one_refused(tmp_path):
    from reasonseg.checkpoints.build import STAGE_INFO_NAME, read_stage_info
    from reasonseg.errors import CheckpointError

    assert read_stage_info(tmp_path) == {}  # any other VLM: LLaVA's defaults
    (tmp_path / STAGE_INFO_NAME).write_text('{"conv_type": "llava_v1", "image_placement": "after_text"}')
    assert read_stage_info(tmp_path)["image_placement"] == "after_text"
    (tmp_path / STAGE_INFO_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        read_stage_info(tmp_path)
