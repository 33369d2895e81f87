"""The demo model's pre-training stages (toy SAM, toy LLaVA) run from their CLI for a few steps, resume exactly, and
write the formats `reasonseg build` takes."""

from __future__ import annotations

import json
import re
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast, SamModel

from reasonseg.cli.main import main
from reasonseg.modeling.sam import image_wide_positional_embeddings
from reasonseg.training.trainer import STATE_FILE
from reasonseg.training.sam_pretrain import (
    LOOKALIKE_IMAGES,
    LOOKALIKE_SCAN,
    LOOKALIKE_START,
    build_sam,
    draw_prompt_batch,
    load_sam_pretrain_config,
    lookalike_scene,
    padded_mask,
)
from reasonseg.processing.sam_transform import SamTransform
from reasonseg.processing.processing_reasonseg import ReasonSegProcessor
from reasonseg.data.toy_world import generate_sample, generate_scene, phase_train_index, split_seed
from reasonseg.data.toy_world.sample import PHASE_SCENE_STRIDE
from reasonseg.data.toy_world.scene import same_colour_neighbours
from reasonseg.data.toy_world.queries import grid_cell
from reasonseg.data.toy_world.turns import referring_question, referring_turn
from reasonseg.errors import InputError
from reasonseg.training.vlm_pretrain import (
    IGNORE_INDEX,
    TRAINING_AIDS_FILE,
    build_llava,
    build_world_tokenizer,
    encode_conversation,
    load_vlm_pretrain_config,
    scene_turns,
    train_sample,
    sincos_2d_positions,
)

pytestmark = pytest.mark.slow

TINY_SAM = ["image_size=64", "patch_size=8", "encoder_width=32", "encoder_depth=2", "encoder_heads=2",
            "window_size=4", "global_attn_indexes=[1]", "embed_dim=32", "decoder_mlp_dim=64", "decoder_heads=2",
            "batch_size=2", "prompts_per_image=2", "steps=4", "save_every=2", "val_every=4", "val_scenes=2",
            "log_every=1", "warmup_steps=1"]
TINY_VLM = ["vocab_size=300", "tokenizer_scenes=20", "image_size=32", "patch_size=16", "vision_width=32",
            "vision_depth=2", "vision_heads=2", "text_width=32", "text_depth=2", "text_heads=2",
            "text_intermediate=64", "batch_size=2", "steps=4", "save_every=2", "val_every=4", "val_scenes=2",
            "log_every=1", "warmup_steps=1"]


STAGE_CONFIGS = {"sam": "configs/demo/toy_sam.yaml", "vlm": "configs/demo/toy_llava.yaml"}


def _final_weights(directory):
    return load_file(str(directory / "model" / "model.safetensors"))


@pytest.mark.parametrize("stage, settings, model_class", [("sam", TINY_SAM, SamModel),
                                                          ("vlm", TINY_VLM, LlavaForConditionalGeneration)])
def test_stage_trains_resumes_exactly_and_saves_a_loadable_model(tmp_path, stage, settings, model_class):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(["pretrain", stage, "--config", STAGE_CONFIGS[stage], f"output_dir={straight}", *settings]) == 0
    args = ["pretrain", stage, "--config", STAGE_CONFIGS[stage], f"output_dir={interrupted}", *settings]
    assert main([*args, "--stop-after", "2"]) == 0
    assert not (interrupted / "model").exists()
    assert main([*args, "--resume"]) == 0
    first, second = _final_weights(straight), _final_weights(interrupted)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-6, rtol=0, msg=name)
    model = model_class.from_pretrained(str(straight / "model"))
    assert sum(p.numel() for p in model.parameters()) > 0
    log = (straight / "log.jsonl").read_text().splitlines()
    assert len(log) == 4 and ("point_miou" in log[-1] or "val_token_accuracy" in log[-1])
    # a fresh run into a directory with checkpoints refuses instead of overwriting them
    assert main(args) == 1


@pytest.mark.parametrize("stage, settings, wider", [("sam", TINY_SAM, "embed_dim=48"),
                                                    ("vlm", TINY_VLM, "text_width=48")])
def test_phase_starts_from_an_earlier_run_with_a_fresh_schedule(tmp_path, stage, settings, wider):
    config = STAGE_CONFIGS[stage]
    first = tmp_path / "phase1"
    assert main(["pretrain", stage, "--config", config, f"output_dir={first}", *settings]) == 0
    before = _final_weights(first)
    for source in (first / "model", first / "checkpoint-4"):
        second = tmp_path / f"phase2_{source.name}"
        assert main(["pretrain", stage, "--config", config, f"output_dir={second}", f"init_from={source}",
                     *settings, "steps=1", "lr=0", "warmup_steps=0", "val_every=0"]) == 0
        after = _final_weights(second)  # a zero learning rate keeps the earlier run's weights exactly
        for name in before:
            torch.testing.assert_close(after[name], before[name], atol=0, rtol=0, msg=name)
        if stage == "vlm":
            assert (second / "tokenizer" / "tokenizer.json").read_text() == (first / "tokenizer" / "tokenizer.json").read_text()
        log = [json.loads(line) for line in (second / "log.jsonl").read_text().splitlines()]
        assert log[0]["step"] == 1
    # other sizes than the earlier run's: one line saying so
    assert main(["pretrain", stage, "--config", config, f"output_dir={tmp_path / 'wider'}",
                 f"init_from={first / 'model'}", *settings, wider]) == 1
    assert main(["pretrain", stage, "--config", config, f"output_dir={tmp_path / 'nowhere'}",
                 f"init_from={tmp_path}", *settings]) == 1


def test_deeper_lm_starts_from_a_shallower_run_as_the_same_function(tmp_path, capsys):
    config = STAGE_CONFIGS["vlm"]
    first = tmp_path / "shallow"
    assert main(["pretrain", "vlm", "--config", config, f"output_dir={first}", *TINY_VLM]) == 0
    deeper = tmp_path / "deeper"
    grow = [f"init_from={first / 'model'}", "repeat_text_layers=[0,1]"]
    assert main(["pretrain", "vlm", "--config", config, f"output_dir={deeper}", *TINY_VLM, *grow, "text_depth=4",
                 "steps=1", "lr=0", "warmup_steps=0", "val_every=0"]) == 0
    before, after = _final_weights(first), _final_weights(deeper)
    layer = "language_model.model.layers.{}.{}"  # the llava-hf layout save_pretrained writes
    for new_index, old_index in enumerate([0, 0, 1, 1]):
        for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
            expected = before[layer.format(old_index, name)]
            if new_index in (1, 3) and name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
                expected = torch.zeros_like(expected)
            torch.testing.assert_close(after[layer.format(new_index, name)], expected, atol=0, rtol=0)
    shallow_model = LlavaForConditionalGeneration.from_pretrained(first / "model").eval()
    deep_model = LlavaForConditionalGeneration.from_pretrained(deeper / "model").eval()
    assert deep_model.config.text_config.num_hidden_layers == 4
    tokens = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(deep_model(input_ids=tokens).logits, shallow_model(input_ids=tokens).logits)
    # a depth that does not add up, a layer the saved LM lacks, no init_from, a checkpoint: one line each
    capsys.readouterr()
    for bad, message in (([*grow, "text_depth=5"], "set text_depth to 4"),
                         ([f"init_from={first / 'model'}", "repeat_text_layers=[2]", "text_depth=3"], "0 to 1"),
                         (["repeat_text_layers=[0]", "text_depth=3"], "needs init_from"),
                         ([f"init_from={first / 'checkpoint-4'}", "repeat_text_layers=[0]", "text_depth=3"],
                          "not a training checkpoint")):
        assert main(["pretrain", "vlm", "--config", config, f"output_dir={tmp_path / 'bad'}", *TINY_VLM, *bad]) == 1
        stderr = capsys.readouterr().err  # besides transformers' loading bar
        error = [line for line in stderr.splitlines() if line.startswith("error")]
        assert len(error) == 1 and message in error[0] and "Traceback" not in stderr, stderr


def test_wider_image_encoder_starts_from_an_earlier_sams_prompt_encoder_and_mask_decoder(tmp_path, capsys):
    config = STAGE_CONFIGS["sam"]
    first = tmp_path / "narrow"
    assert main(["pretrain", "sam", "--config", config, f"output_dir={first}", *TINY_SAM]) == 0
    before = _final_weights(first)
    wide = tmp_path / "wide"
    assert main(["pretrain", "sam", "--config", config, f"output_dir={wide}", f"init_decoder_from={first / 'model'}",
                 *TINY_SAM, "encoder_width=48", "encoder_depth=3", "global_attn_indexes=[2]",
                 "steps=1", "lr=0", "warmup_steps=0", "val_every=0"]) == 0
    after = _final_weights(wide)
    carried = [name for name in before if not name.startswith("vision_encoder.")]
    assert len(carried) > 50 and any(name.startswith("mask_decoder.") for name in carried)
    for name in carried:
        torch.testing.assert_close(after[name], before[name], atol=0, rtol=0, msg=name)
    assert after["vision_encoder.patch_embed.projection.weight"].shape[0] == 48
    assert "vision_encoder.layers.2.attn.qkv.weight" in after
    # a decoder of another width, a folder without a saved SAM, and both init keys: one line each
    for bad in ([f"init_decoder_from={first / 'model'}", "embed_dim=48"], [f"init_decoder_from={tmp_path}"],
                [f"init_decoder_from={first / 'model'}", f"init_from={first / 'model'}"]):
        assert main(["pretrain", "sam", "--config", config, f"output_dir={tmp_path / 'bad'}", *TINY_SAM, *bad]) == 1
    # a config.json that is not JSON, and a saved model of another kind
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    capsys.readouterr()
    for folder, message in (("corrupt", "config.json is not valid JSON"), ("llava", "holds a 'llava' model, not a SAM")):
        assert main(["pretrain", "sam", "--config", config, f"output_dir={tmp_path / 'bad'}", *TINY_SAM,
                     f"init_decoder_from={tmp_path / folder}"]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0] and "toy SAM run's model folder" in error[0], error


def test_vlm_curriculum_keeps_scenes_with_few_objects():
    counts = {index: len(generate_scene(split_seed("train", index)).objects) for index in range(40)}
    for index, count in counts.items():
        assert train_sample(index, 6).seed == split_seed("train", index)
        chosen = train_sample(index, 1)
        assert len(generate_scene(chosen.seed).objects) == len(chosen.objects) == 1
        assert (chosen.seed == split_seed("train", index)) == (count == 1)
        # the sample of the seed the walk stopped at, queries included
        assert [q.answer for q in chosen.queries] == [q.answer for q in generate_sample(chosen.seed).queries]
    with pytest.raises(InputError, match="max_objects"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["max_objects=0"])


def test_pretraining_seed_decides_which_train_scenes_a_phase_reads():
    """A phase started from an earlier one's weights (init_from) with another seed reads scenes the earlier one did
    not: seed s starts at train scene s * 1,000,000, so phases of under a million scenes never overlap."""
    from reasonseg.data.toy_world import phase_train_index
    from reasonseg.training.vlm_pretrain import build_image_processor, draw_batch

    assert [phase_train_index(0, i) for i in (0, 7)] == [0, 7]
    assert phase_train_index(3, 7) == 3_000_007 and phase_train_index(9, 1_000_005) == 5
    sam = [load_sam_pretrain_config("configs/demo/toy_sam.yaml", [*TINY_SAM, f"seed={seed}"]) for seed in (0, 2)]
    transform = SamTransform(sam[0].image_size)
    first, later = (draw_prompt_batch(config, 0, transform) for config in sam)
    assert not torch.equal(first.pixel_values, later.pixel_values)
    scene = generate_scene(split_seed("train", 2_000_000))
    assert torch.equal(later.pixel_values[0], transform(Image.fromarray(scene.image))[0])

    tokenizer = build_world_tokenizer(load_vlm_pretrain_config("configs/demo/toy_llava.yaml", TINY_VLM))
    vlm = [load_vlm_pretrain_config("configs/demo/toy_llava.yaml", [*TINY_VLM, f"seed={seed}"]) for seed in (0, 1)]
    processor = build_image_processor(vlm[0])
    batches = [draw_batch(config, 0, tokenizer, processor) for config in vlm]
    expected = [processor(images=[Image.fromarray(generate_scene(split_seed("train", phase_train_index(seed, row))).image)
                                  for row in range(vlm[0].batch_size)], return_tensors="pt")["pixel_values"]
                for seed in (0, 1)]
    for batch, pixels in zip(batches, expected):
        assert torch.equal(batch["pixel_values"], pixels)
    assert not torch.equal(batches[0]["pixel_values"], batches[1]["pixel_values"])


@pytest.mark.parametrize("gain", [5.0, 0.0])
def test_toy_sam_cross_attention_starts_positional(gain):
    """With the positional start, a prompt at any cell of the embedding grid attends most to that cell in the mask
    decoder's first token-to-image attention (by position alone); transformers' random start finds few of them.
    The random Fourier matrix stays fixed, as segment-anything keeps it."""
    config = load_sam_pretrain_config("configs/demo/toy_sam.yaml", [*TINY_SAM, f"positional_attention_gain={gain}"])
    model = build_sam(config)
    assert not model.shared_image_embedding.positional_embedding.requires_grad
    grid = config.image_size // config.patch_size
    attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    with torch.no_grad():
        keys = attention.k_proj(image_wide_positional_embeddings(model, grid)[0].flatten(1).T)  # [grid*grid, d]
        centres = (torch.arange(grid * grid) % grid + 0.5) / grid, (torch.arange(grid * grid) // grid + 0.5) / grid
        points = model.shared_image_embedding(torch.stack(centres, dim=-1)[None, None])[0, 0]  # [grid*grid, C]
        found = (attention.q_proj(points) @ keys.T).argmax(dim=-1) == torch.arange(grid * grid)
    if gain:
        assert found.float().mean() == 1.0
    else:
        assert found.float().mean() < 0.5


def test_sam_prompts_are_inside_their_targets():
    config = load_sam_pretrain_config("configs/demo/toy_sam.yaml", TINY_SAM)
    batch = draw_prompt_batch(config, 0, SamTransform(config.image_size))
    assert batch.pixel_values.shape == (2, 3, 64, 64) and batch.targets.shape == (2, 2, 64, 64)
    for row in range(2):
        for k in range(2):
            x, y = batch.points[row, k, 0].round().long().tolist()
            target = batch.targets[row, k]
            # the point (in the resized frame) lies on, or within a pixel of, its object's mask
            assert target[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].max() == 1
            x0, y0, x1, y1 = batch.boxes[row, k].tolist()
            ys, xs = np.nonzero(target.numpy())
            assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1


def test_sam_lookalike_images_prompt_only_shapes_beside_a_same_coloured_look_alike():
    config = load_sam_pretrain_config("configs/demo/toy_sam.yaml", [*TINY_SAM, "batch_size=6", "lookalike_rate=1"])
    transform = SamTransform(config.image_size)
    batch = draw_prompt_batch(config, 0, transform)
    for row in range(config.batch_size):
        scene, beside = lookalike_scene(config, row)
        assert beside and all(same_colour_neighbours(scene, index) for index in beside)
        pixel_values, resized = transform(Image.fromarray(scene.image))
        torch.testing.assert_close(batch.pixel_values[row], pixel_values)
        allowed = [padded_mask(scene.objects[index].mask, resized, config.image_size) for index in beside]
        for target in batch.targets[row].numpy():
            assert any(np.array_equal(target, mask) for mask in allowed)
    # rate 0 reads the plain scenes, as before the option existed
    plain = load_sam_pretrain_config("configs/demo/toy_sam.yaml", TINY_SAM)
    scene = generate_scene(split_seed("train", phase_train_index(plain.seed, 1)))
    torch.testing.assert_close(draw_prompt_batch(plain, 0, transform).pixel_values[1],
                               transform(Image.fromarray(scene.image))[0])
    with pytest.raises(InputError, match="lookalike_rate 1.5 is not a share"):
        load_sam_pretrain_config("configs/demo/toy_sam.yaml", [*TINY_SAM, "lookalike_rate=1.5"])
    # lookalike_reach 0: the prompted shapes touch a shape of their colour
    touching = load_sam_pretrain_config("configs/demo/toy_sam.yaml", [*TINY_SAM, "batch_size=4", "lookalike_rate=1",
                                                                      "lookalike_reach=0"])
    found = [f for f in (lookalike_scene(touching, row) for row in range(6)) if f is not None]  # ~6 % of scenes
    assert found and all(same_colour_neighbours(scene, index, 0.0) for scene, beside in found for index in beside)
    assert any(not same_colour_neighbours(scene, index, 0.0)
               for scene, beside in (lookalike_scene(config, row) for row in range(6)) for index in beside)
    with pytest.raises(InputError, match="lookalike_reach -0.1 should be a fraction"):
        load_sam_pretrain_config("configs/demo/toy_sam.yaml", [*TINY_SAM, "lookalike_reach=-0.1"])
    # a phase long enough to read look-alikes from the next seed's scenes is refused; the longest allowed is not
    longest = LOOKALIKE_IMAGES // 8
    assert LOOKALIKE_START + longest * 8 * LOOKALIKE_SCAN <= PHASE_SCENE_STRIDE
    load_sam_pretrain_config("configs/demo/toy_sam.yaml", ["batch_size=8", f"steps={longest}", "lookalike_rate=0.5"])
    with pytest.raises(InputError, match=f"run at most {longest:,} steps per phase"):
        load_sam_pretrain_config("configs/demo/toy_sam.yaml", ["batch_size=8", f"steps={longest + 1}",
                                                                "lookalike_rate=0.5"])
    load_sam_pretrain_config("configs/demo/toy_sam.yaml", ["batch_size=8", f"steps={longest + 1}"])  # no look-alikes


def test_sam_phase_without_prompt_side_training_changes_only_the_image_encoder(tmp_path, capsys):
    config = STAGE_CONFIGS["sam"]
    first = tmp_path / "first"
    assert main(["pretrain", "sam", "--config", config, f"output_dir={first}", *TINY_SAM]) == 0
    second = tmp_path / "second"
    assert main(["pretrain", "sam", "--config", config, f"output_dir={second}", f"init_from={first / 'model'}",
                 *TINY_SAM, "train_prompt_side=false", "lookalike_rate=0.5", "lr=1e-2", "val_every=0"]) == 0
    before, after = _final_weights(first), _final_weights(second)
    encoder = [name for name in before if name.startswith("vision_encoder.")]
    assert any(not torch.equal(before[name], after[name]) for name in encoder)
    for name in before.keys() - set(encoder):
        torch.testing.assert_close(after[name], before[name], atol=0, rtol=0, msg=name)
    # resumed, the same run ends where it ends straight (a checkpoint holds only what learns: the frozen prompt side
    # comes from init_from again)
    interrupted = tmp_path / "interrupted"
    args = ["pretrain", "sam", "--config", config, f"output_dir={interrupted}", f"init_from={first / 'model'}",
            *TINY_SAM, "train_prompt_side=false", "lookalike_rate=0.5", "lr=1e-2", "val_every=0", "seed=3"]
    assert main([*args, "--stop-after", "2"]) == 0 and main([*args, "--resume"]) == 0
    resumed = _final_weights(interrupted)
    for name in before.keys() - set(encoder):
        torch.testing.assert_close(resumed[name], before[name], atol=0, rtol=0, msg=name)
    capsys.readouterr()
    assert main(["pretrain", "sam", "--config", config, f"output_dir={tmp_path / 'bad'}", *TINY_SAM,
                 "train_prompt_side=false"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "give init_from" in error[0], error


def test_vlm_labels_supervise_exactly_the_answers():
    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", TINY_VLM)
    tokenizer = build_world_tokenizer(config)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    turns = [("How many shapes are there?", "There are two shapes."), ("What colour is the star?", "It is red.")]
    ids, labels = encode_conversation(tokenizer, config, turns)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == config.num_image_tokens
    supervised = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert supervised == " There are two shapes.</s> It is red.</s>"
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))


def test_vlm_image_placement_after_text_puts_the_image_tokens_after_the_first_question():
    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", [*TINY_VLM, "image_placement=after_text"])
    tokenizer = build_world_tokenizer(config)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids, _ = encode_conversation(tokenizer, config, [("How many shapes are there?", "Two."), ("And stars?", "One.")])
    first_image = ids.index(image_id)
    assert ids[first_image : first_image + config.num_image_tokens] == [image_id] * config.num_image_tokens
    assert ids.count(image_id) == config.num_image_tokens
    before = tokenizer.decode(ids[:first_image])
    assert "How many shapes are there?" in before and "And stars?" not in before
    with pytest.raises(InputError, match="image_placement 'middle'"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["image_placement=middle"])


def test_vlm_bidirectional_image_attention_changes_only_the_image_and_later_states():
    """With the question before the image, the question's states are the same either way; the first image token
    sees the later patches only under image_attention=bidirectional, and the stage records the mode for the build."""
    from reasonseg.training.vlm_pretrain import llava_forward

    settings = [*TINY_VLM, "image_placement=after_text"]
    causal = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", settings)
    bidirectional = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", [*settings, "image_attention=bidirectional"])
    tokenizer = build_world_tokenizer(causal)
    torch.manual_seed(0)
    model = build_llava(causal, tokenizer).eval()
    ids, _ = encode_conversation(tokenizer, causal, [("How many shapes are there?", "Two.")])
    ids = torch.tensor([ids])
    pixels = torch.randn(1, 3, causal.image_size, causal.image_size)
    with torch.no_grad():
        states = [llava_forward(model, config, ids, pixel_values=pixels, output_hidden_states=True).hidden_states[-1][0]
                  for config in (causal, bidirectional)]
    first_image = int((ids[0] == model.config.image_token_id).nonzero()[0])
    torch.testing.assert_close(states[0][:first_image], states[1][:first_image], atol=1e-6, rtol=0)
    assert not torch.allclose(states[0][first_image], states[1][first_image], atol=1e-4)
    assert not torch.allclose(states[0][-1], states[1][-1], atol=1e-4)
    with pytest.raises(InputError, match="image_attention 'prefix'"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["image_attention=prefix"])


def test_vlm_referring_turns_name_the_target_and_its_grid_cell():
    from reasonseg.data.toy_world import generate_sample, split_seed

    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0"])
    seen = 0
    for index in range(20):
        sample = generate_sample(split_seed("train", index))
        for question, answer in scene_turns(sample, np.random.default_rng(index), config):
            match = re.fullmatch(r"It is the (.+) at \((\d), (\d)\)\.", answer)
            assert match, answer
            obj = next(o for o in sample.objects if o.describe(with_size=True) == match[1])
            assert (int(match[2]), int(match[3])) == (obj.point[0] * 8 // sample.width, obj.point[1] * 8 // sample.height)
            seen += 1
    assert seen == 20 * config.turns_per_image


def test_vlm_absent_turns_ask_about_missing_objects_and_mark_no_patch():
    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.training.vlm_pretrain import ABSENT, scene_turns_and_targets, target_patch_labels

    base = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0"])
    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0", "absent_rate=1.0"])
    half = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0", "absent_rate=0.5"])
    kinds = []
    for index in range(20):
        sample = generate_sample(split_seed("train", index))
        absent = next(q for q in sample.queries if q.family == "no_target")
        turns, targets = scene_turns_and_targets(sample, np.random.default_rng(index), config)
        assert targets == [ABSENT] * config.turns_per_image
        for question, answer in turns:
            assert absent.text in question and answer == absent.answer and "[SEG]" not in answer
        assert (target_patch_labels(sample, ABSENT, 8) == 0).all()
        kinds += [t is ABSENT for t in scene_turns_and_targets(sample, np.random.default_rng(index), half)[1]]
        # absent_rate 0 (the default) asks only about objects in the scene
        unchanged = scene_turns(sample, np.random.default_rng(index), base)
        assert all(re.fullmatch(r"It is the .+ at \(\d, \d\)\.", answer) for _, answer in unchanged)
    assert 0.25 < sum(kinds) / len(kinds) < 0.75
    with pytest.raises(InputError, match="absent_rate 1.5"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["absent_rate=1.5"])


def test_vlm_list_turns_place_every_target_in_the_order_of_its_seg():
    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.data.toy_world.turns import list_turn
    from reasonseg.training.vlm_pretrain import scene_turns_and_targets, target_patch_labels

    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0", "list_rate=1.0"])
    base = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0"])
    half = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0", "list_rate=0.5"])
    seen, kinds = 0, []
    for index in range(20):
        sample = generate_sample(split_seed("train", index))
        several = [q for q in sample.queries if q.family == "multi_target"]
        turns, targets = scene_turns_and_targets(sample, np.random.default_rng(index), config)
        for (question, answer), target in zip(turns, targets):
            if not several:  # nothing to list: a one-target referring turn
                assert answer.startswith("It is the") and not isinstance(target, tuple)
                continue
            query = next(q for q in several if list_turn(sample, q) == (question, answer))
            # stage 3's answer to the same query, less its [SEG]s and opening words
            seg_answer = query.answer.replace(" [SEG]", "")
            places = re.findall(r"the ([a-z ]+) at \((\d), (\d)\)", answer, flags=re.I)
            assert places == re.findall(r"the ([a-z ]+) at \((\d), (\d)\)", seg_answer, flags=re.I)
            assert answer.startswith("They are the ") and len(places) == len(query.targets) >= 2
            assert question == (query.text if query.is_sentence else f"Find {query.text}.")
            assert target == tuple(sample.objects[i] for i in query.targets)
            labels = target_patch_labels(sample, target, 8)
            union = torch.stack([target_patch_labels(sample, obj, 8) for obj in target]).amax(0)
            assert torch.equal(labels, union)
            seen += 1
        kinds += [isinstance(t, tuple) for t in scene_turns_and_targets(sample, np.random.default_rng(index), half)[1]]
        # list_rate 0 (the default) draws the same turns as before the knob existed
        assert all(re.fullmatch(r"It is the .+ at \(\d, \d\)\.", a) for _, a in scene_turns(sample, np.random.default_rng(index), base))
    assert seen >= 20
    assert 0.2 < sum(kinds) / len(kinds) < 0.7
    with pytest.raises(InputError, match="list_rate -0.1"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["list_rate=-0.1"])


def test_vlm_region_turns_ask_what_lies_at_a_cell_held_by_one_object():
    from reasonseg.data.toy_world import generate_sample, split_seed

    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=0", "region_rate=1"])
    seen = 0
    for index in range(20):
        sample = generate_sample(split_seed("train", index))
        cells = [grid_cell(o, sample.width, sample.height) for o in sample.objects]
        for question, answer in scene_turns(sample, np.random.default_rng(index), config):
            place = re.search(r"at \((\d), (\d)\)\?$", question)
            assert place, question
            holders = [o for o, cell in zip(sample.objects, cells) if cell == (int(place[1]), int(place[2]))]
            assert len(holders) == 1 and answer == f"It is the {holders[0].describe(with_size=True)}."
            seen += 1
    assert seen >= 20 * config.turns_per_image - 3  # a scene whose objects all share cells asks QA instead
    with pytest.raises(InputError, match="add up to at most 1"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=0.7", "region_rate=0.5"])


def test_sincos_positions_say_where_each_patch_is():
    codes = sincos_2d_positions(8, 128)
    assert codes.shape == (64, 128)
    assert torch.cdist(codes, codes).add(torch.eye(64) * 10).min() > 0.3  # every cell has its own code
    # column and row are linear read-outs of the code (what the LM has to learn to say "at (3, 6)")
    cells = torch.tensor([[k % 8, k // 8] for k in range(64)], dtype=torch.float64)
    design = torch.cat([codes.double(), torch.ones(64, 1, dtype=torch.float64)], dim=1)
    fit = design @ (torch.linalg.pinv(design) @ cells)
    assert (fit - cells).abs().max() < 1e-6
    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", TINY_VLM)
    assert config.position_init == "sincos"
    tokenizer = build_world_tokenizer(config)
    tower = build_llava(config, tokenizer).model.vision_tower.embeddings.position_embedding.weight
    grid = config.image_size // config.patch_size
    torch.testing.assert_close(tower[1:], sincos_2d_positions(grid, config.vision_width))
    assert float(tower[1:].pow(2).mean().sqrt()) > 0.5  # the default start is 0.02
    with pytest.raises(InputError, match="position_init"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["position_init=learned"])


def test_toy_world_source_gives_one_mask_per_seg_in_answer_order():
    import random

    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.training.datasets import ToyWorldSource

    source = ToyWorldSource("train")
    for index in range(6):
        drawn = source.draw(index, random.Random(index), 3)
        answers = [turns[0][1] for turns in drawn.conversations]
        assert drawn.masks.shape[0] == sum(a.count("[SEG]") for a in answers)
        sample = generate_sample(split_seed("train", index))
        assert drawn.masks.shape[1:] == (sample.height, sample.width)
        assert {m.tobytes() for m in drawn.masks} <= {o.mask.astype(np.uint8).tobytes() for o in sample.objects}
    with pytest.raises(Exception, match="should name a split"):
        ToyWorldSource("nonsense")


def test_toy_world_kinds_line_asks_only_those_kinds_with_their_masks():
    import random

    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.data.toy_world.queries import focus_queries
    from reasonseg.data.toy_world.turns import referring_seg_answer
    from reasonseg.training.config import DatasetSpec
    from reasonseg.training.datasets import make_source

    kinds = ["only_of_kind", "only_of_colour", "closest"]
    source = make_source(DatasetSpec("toy_world", "train", kinds="||".join(kinds), answer_style="referring_and_lists"))
    scenes = set()
    for index in range(12):
        drawn = source.draw(index, random.Random(index), 3)
        seed = int(drawn.source.split(":")[1])
        scenes.add(seed)
        sample = generate_sample(seed)
        wanted = {referring_seg_answer(sample, q): q for q in focus_queries(sample.scene, seed, kinds)}
        answers = [turns[0][1] for turns in drawn.conversations]
        assert answers and all(answer in wanted for answer in answers), (answers, list(wanted))
        expected = [sample.objects[wanted[answer].targets[0]].mask.astype(np.uint8) for answer in answers]
        assert np.array_equal(drawn.masks, np.stack(expected))
    # scene 0 offers none of them: it is passed over for the next scene that does
    assert not focus_queries(generate_sample(split_seed("train", 0)).scene, split_seed("train", 0), kinds)
    assert split_seed("train", 0) not in scenes and len(scenes) >= 4
    with pytest.raises(InputError, match="subsets .* or kinds .*, not both"):
        make_source(DatasetSpec("toy_world", "train", subsets="spatial", kinds="closest"))
    with pytest.raises(InputError, match="unknown query kinds 'nearest'"):
        make_source(DatasetSpec("toy_world", "train", kinds="nearest"))
    with pytest.raises(InputError, match="kinds applies to toy_world datasets only"):
        make_source(DatasetSpec("custom", "x.jsonl", kinds="closest"))


def test_same_colour_neighbours_finds_close_look_alikes_only():
    from reasonseg.data.toy_world import BackgroundSpec, ObjectSpec, render_scene
    from reasonseg.data.toy_world.scene import same_colour_neighbours

    layout = [ObjectSpec("square", "red", "medium", 40, (60, 60)),
              ObjectSpec("circle", "red", "medium", 40, (105, 60)),  # 5 px from the square: within 8 % of 200
              ObjectSpec("star", "blue", "medium", 40, (60, 105)),  # as close, another colour
              ObjectSpec("heart", "red", "medium", 40, (160, 160))]  # same colour, far
    scene = render_scene(200, 200, layout, BackgroundSpec("plain", (128, 128, 128)), allow_overlap=False)
    assert same_colour_neighbours(scene, 0) == [1]
    assert same_colour_neighbours(scene, 1) == [0]
    assert same_colour_neighbours(scene, 2) == []
    assert same_colour_neighbours(scene, 3) == []
    assert same_colour_neighbours(scene, 3, reach=0.5) == [0, 1]


def test_toy_world_target_filter_keeps_shapes_beside_a_look_alike():
    import random

    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.data.toy_world.scene import same_colour_neighbours
    from reasonseg.training.config import DatasetSpec
    from reasonseg.training.datasets import make_source

    source = make_source(DatasetSpec("toy_world", "train", target_filter="beside_same_colour",
                                     answer_style="referring_and_lists"))
    scenes = set()
    for index in range(0, 64, 8):
        drawn = source.draw(index, random.Random(index), 3)
        seed = int(drawn.source.split(":")[1])
        scenes.add(seed)
        sample = generate_sample(seed)
        assert len(drawn.masks) == len(drawn.conversations) >= 1
        for mask, turns in zip(drawn.masks, drawn.conversations):
            assert turns[0][1].count("[SEG]") == 1
            target = next(i for i, obj in enumerate(sample.objects) if np.array_equal(obj.mask, mask.astype(bool)))
            assert same_colour_neighbours(sample.scene, target)
            assert sample.objects[target].describe() in turns[0][1]
    first = generate_sample(split_seed("train", 0))  # scene 0 has no look-alike pair: passed over
    assert not any(same_colour_neighbours(first.scene, i) for i in range(len(first.objects)))
    assert split_seed("train", 0) not in scenes and len(scenes) >= 4
    spatial = make_source(DatasetSpec("toy_world", "train", subsets="spatial", target_filter="beside_same_colour"))
    assert all(q.family == "spatial" for q in spatial._sample_and_queries(3)[1])
    with pytest.raises(InputError, match="target_filter 'touching' should be one of beside_same_colour"):
        make_source(DatasetSpec("toy_world", "train", target_filter="touching"))
    with pytest.raises(InputError, match="target_filter applies to toy_world datasets only"):
        make_source(DatasetSpec("custom", "x.jsonl", target_filter="beside_same_colour"))
    with pytest.raises(InputError, match="'qa' asks for no masks: remove target_filter"):
        make_source(DatasetSpec("toy_world", "train", subsets="qa", target_filter="beside_same_colour"))


def test_toy_world_language_subset_gives_stage_two_turns_without_masks():
    import random

    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.training.datasets import ToyWorldSource

    source = ToyWorldSource("train", "qa")
    seen_region = seen_qa = 0
    for index in range(8):
        drawn = source.draw(index, random.Random(index), 3)
        sample = generate_sample(split_seed("train", index))
        assert drawn.masks.shape == (0, sample.height, sample.width)
        assert 1 <= len(drawn.conversations) <= 3
        pairs = {(p.question, p.answer) for p in sample.qa}
        for (question, answer), in drawn.conversations:
            assert "[SEG]" not in answer
            if question.endswith(")?"):  # "What is at (3, 6)?" -> "It is the small red star."
                seen_region += 1
                assert any(answer == f"It is the {o.describe(with_size=True)}." for o in sample.objects)
            else:
                seen_qa += 1
                assert (question, answer) in pairs
    assert seen_region and seen_qa
    with pytest.raises(InputError, match="stands alone"):
        ToyWorldSource("train", "qa||attribute")


def test_toy_world_referring_subset_gives_stage_two_referring_turns_without_masks():
    import random

    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.data.toy_world.turns import referring_queries
    from reasonseg.training.datasets import ToyWorldSource

    source = ToyWorldSource("train", "referring")
    for index in range(6):
        drawn = source.draw(index, random.Random(index), 3)
        sample = generate_sample(split_seed("train", index))
        assert drawn.masks.shape == (0, sample.height, sample.width)
        asked = {q.text if q.is_sentence else f"Which shape is {q.text}?": q for q in referring_queries(sample)}
        assert 1 <= len(drawn.conversations) <= 3
        for (question, answer), in drawn.conversations:
            target = sample.objects[asked[question].targets[0]]
            column, row = grid_cell(target, sample.width, sample.height)
            assert answer == f"It is the {target.describe(with_size=True)} at ({column}, {row})."
    with pytest.raises(InputError, match="stands alone"):
        ToyWorldSource("train", "referring||attribute")


def test_toy_world_referring_answer_style_adds_only_seg_to_the_referring_turns_words():
    import random

    from reasonseg.data.toy_world.turns import referring_turn
    from reasonseg.training.config import load_training_config
    from reasonseg.training.datasets import ToyWorldSource, make_source

    varied, referring = ToyWorldSource("train"), ToyWorldSource("train", None, "referring")
    seen = {"single": 0, "explanatory": 0, "kept": 0}
    for index in range(12):
        drawn_varied = varied.draw(index, random.Random(index), 3)
        drawn = referring.draw(index, random.Random(index), 3)
        # same queries, same masks, same questions: only one-target answers change
        assert np.array_equal(drawn.masks, drawn_varied.masks)
        sample = generate_sample(split_seed("train", index))
        by_answer = {q.answer: q for q in sample.queries}
        for [(question, answer)], [(question_varied, answer_varied)] in zip(drawn.conversations, drawn_varied.conversations):
            assert question == question_varied
            query = by_answer[answer_varied]
            if len(query.targets) != 1 or query.family == "multi_target":
                assert answer == answer_varied
                seen["kept"] += 1
                continue
            said = referring_turn(sample, query)[1]  # "It is the small red star at (3, 6)."
            if query.family == "explanatory":
                assert answer == f"{said[:-1]} [SEG]. {query.reason}"
                seen["explanatory"] += 1
            else:
                assert answer == f"{said[:-1]} [SEG]."
                seen["single"] += 1
    assert all(seen.values()), seen
    with pytest.raises(InputError, match="answer_style 'terse' should be one of varied, referring"):
        ToyWorldSource("train", None, "terse")
    config = load_training_config("configs/demo/reasoning.yaml", [])
    config.datasets[0].answer_style = "referring"
    assert make_source(config.datasets[0]).answer_style == "referring"
    config.datasets[0].kind = "custom"
    with pytest.raises(InputError, match="answer_style applies to toy_world datasets only"):
        make_source(config.datasets[0])


def test_toy_world_list_answer_style_adds_a_seg_after_each_target_of_the_list_turns_words():
    import random

    from reasonseg.data.toy_world.turns import list_turn
    from reasonseg.training.datasets import ToyWorldSource

    referring, lists = ToyWorldSource("train", None, "referring"), ToyWorldSource("train", None, "referring_and_lists")
    several = 0
    for index in range(12):
        drawn, drawn_lists = referring.draw(index, random.Random(index), 3), lists.draw(index, random.Random(index), 3)
        assert np.array_equal(drawn.masks, drawn_lists.masks)
        sample = generate_sample(split_seed("train", index))
        by_answer = {q.answer: q for q in sample.queries}
        for [(question, answer)], [(_, answer_lists)] in zip(drawn.conversations, drawn_lists.conversations):
            query = by_answer.get(answer)
            if query is None or query.family != "multi_target":  # one target or none: as the referring style
                assert answer_lists == answer
                continue
            # "They are the small red star at (3, 6) [SEG] and ...": a [SEG] per target, in the masks' order
            assert answer_lists.count("[SEG]") == len(query.targets) == answer.count("[SEG]")
            assert answer_lists.replace(" [SEG]", "") == list_turn(sample, query)[1]
            several += 1
    assert several >= 3


def test_stage_three_builds_from_both_stages_and_trains(tmp_path):
    """Stage 3 as the card says: `reasonseg build` on the two stage outputs, then `reasonseg train` with
    configs/demo/reasoning.yaml on the generated world; the mask loss is computed and the run exports."""
    import json

    from reasonseg import Segmenter

    sam, vlm, built, run = (tmp_path / name for name in ("sam", "vlm", "built", "run"))
    assert main(["pretrain", "sam", "--config", "configs/demo/toy_sam.yaml", f"output_dir={sam}", *TINY_SAM]) == 0
    assert main(["pretrain", "vlm", "--config", "configs/demo/toy_llava.yaml", f"output_dir={vlm}", *TINY_VLM,
                 "image_placement=after_text", "image_attention=bidirectional"]) == 0
    assert main(["build", "--vlm", str(vlm / "model"), "--sam", str(sam / "model"), "--out", str(built)]) == 0
    processor = ReasonSegProcessor.from_pretrained(built)  # the stage-2 prompt layout travels into the build
    assert processor.settings.image_placement == "after_text"
    assert json.loads((built / "config.json").read_text())["image_attention"] == "bidirectional"
    assert processor.conversation_prompt([("Segment the red circle.", None)]).count("Segment the red circle.\n<image>") == 1
    stage_three = ["train", "--config", "configs/demo/reasoning.yaml", f"model={built}", f"output_dir={run}",
                   "steps_per_epoch=2", "batch_size=2", "conversations_per_image=2", "save_every=2", "log_every=1",
                   "val_data=null", "val_every=0", "warmup_steps=1", "precision=fp32"]  # one process: one precision
    assert main([*stage_three, "--stop-after", "1"]) == 0  # the same flag as the pre-training stages
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    assert main([*stage_three, "--resume"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r.get("event") == "train"]
    assert len(steps) == 2 and all(r["mask_bce"] > 0 and r["ce"] > 0 for r in steps)
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "exported")]) == 0
    exported = Segmenter.from_pretrained(str(tmp_path / "exported"), device="cpu")
    assert exported.model.config.image_attention == "bidirectional"
    prediction = exported.predict(
        "examples/shapes.png", "Segment the red circle.", max_new_tokens=4, force_seg=True)
    width, height = Image.open("examples/shapes.png").size
    assert len(prediction.masks) >= 1 and prediction.masks[0].shape == (height, width)


def test_vlm_patch_labels_name_the_object_under_each_patch_centre():
    from reasonseg.data.toy_world.vocab import COLOUR_NAMES, SHAPES
    from reasonseg.training.vlm_pretrain import patch_object_labels

    sample = generate_sample(split_seed("train", 3))
    labels = patch_object_labels(sample, 8)
    assert labels.shape == (64, 2)
    for k, (colour, shape) in enumerate(labels.tolist()):
        row, column = divmod(k, 8)
        x, y = int((column + 0.5) * sample.width / 8), int((row + 0.5) * sample.height / 8)
        under = [o for o in sample.objects if o.mask[y, x]]
        expected = (COLOUR_NAMES.index(under[0].colour), SHAPES.index(under[0].shape)) if under else (8, 6)
        assert (colour, shape) == expected
    assert (labels[:, 0] < 8).any() and (labels[:, 0] == 8).any()


def test_vlm_target_patches_are_the_queried_objects_patches():
    from reasonseg.training.vlm_pretrain import TargetPatchHead, target_patch_labels

    sample = generate_sample(split_seed("train", 3))
    for obj in sample.objects:
        labels = target_patch_labels(sample, obj, 8).reshape(8, 8)
        column, row = grid_cell(obj, sample.width, sample.height)
        assert labels[row, column] == 1
        for r in range(8):
            for c in range(8):
                patch = obj.mask[r * sample.height // 8 : (r + 1) * sample.height // 8,
                                 c * sample.width // 8 : (c + 1) * sample.width // 8]
                assert labels[r, c] == float(patch.mean() >= 0.25 or (r, c) == (row, column))
    unasked = target_patch_labels(sample, None, 8)
    assert (unasked == -1).all()
    head = TargetPatchHead(4)
    assert float(head.loss(torch.randn(1, 64, 4), unasked[None])) == 0.0  # a turn about no object teaches nothing


@pytest.mark.parametrize("aid, head", [
    (["patch_label_weight=1.0"], "patch_label_head"),
    (["target_patch_weight=1.0", "image_placement=after_text", "referring_rate=1.0"], "target_patch_head"),
])
def test_vlm_training_aid_trains_resumes_and_leaves_no_head_in_the_model(tmp_path, aid, head):
    args = ["pretrain", "vlm", "--config", "configs/demo/toy_llava.yaml", *TINY_VLM, *aid, "val_every=0"]
    assert main([*args, f"output_dir={tmp_path / 'straight'}"]) == 0
    assert main([*args, f"output_dir={tmp_path / 'cut'}", "--stop-after", "2"]) == 0
    assert main([*args, f"output_dir={tmp_path / 'cut'}", "--resume"]) == 0
    first, second = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "cut")
    assert not any(name.startswith(head) for name in first)
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-6, rtol=0, msg=name)
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    loss_name = "patch_loss" if head == "patch_label_head" else "target_patch_loss"
    assert all(record[loss_name] > 0 for record in log)
    # the trained head lies beside the saved model, and a later phase started from that folder continues it
    heads = load_file(str(tmp_path / "straight" / "model" / TRAINING_AIDS_FILE))
    assert heads and all(name.startswith(head) for name in heads)
    assert main([*args, f"output_dir={tmp_path / 'next'}", f"init_from={tmp_path / 'straight' / 'model'}",
                 "steps=1", "lr=0", "warmup_steps=0"]) == 0
    continued = torch.load(tmp_path / "next" / "checkpoint-1" / STATE_FILE, weights_only=True)["trainable"]
    for name, value in heads.items():
        torch.testing.assert_close(continued[name], value, atol=0, rtol=0, msg=name)


def test_vlm_target_patch_loss_needs_the_question_before_the_image():
    with pytest.raises(InputError, match="target_patch_weight needs image_placement=after_text"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["target_patch_weight=1.0"])


def test_vlm_focus_turns_ask_the_rare_kinds_more_often():
    from reasonseg.data.toy_world import generate_sample, split_seed
    from reasonseg.data.toy_world.queries import focus_queries
    from reasonseg.training.vlm_pretrain import scene_turns_and_targets

    rare = ["only_of_kind", "only_of_colour", "odd_shape", "closest", "farthest"]
    base = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0"])
    unused = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0", f"focus_kinds=[{','.join(rare)}]"])
    config = load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["referring_rate=1.0", f"focus_kinds=[{','.join(rare)}]",
                                                                      "focus_rate=1.0"])
    plain = focused = offered = 0
    for index in range(60):
        sample = generate_sample(split_seed("train", index))
        turns = scene_turns(sample, np.random.default_rng(index), base)
        # focus_rate 0 (the default) draws the same turns as before the knob existed, whatever focus_kinds says
        assert scene_turns(sample, np.random.default_rng(index), unused) == turns
        plain += sum(any(q.kind in rare and question == referring_question(q) for q in sample.queries)
                     for question, _ in turns)
        focus = focus_queries(sample.scene, sample.seed, rare)
        offered += bool(focus)
        turns, targets = scene_turns_and_targets(sample, np.random.default_rng(index), config)
        for (question, answer), target in zip(turns, targets):
            if not focus:
                continue
            query = next(q for q in focus if referring_turn(sample, q) == (question, answer))
            assert target is sample.objects[query.targets[0]]
            focused += 1
    assert offered >= 20 and focused == offered * config.turns_per_image
    assert plain < focused / 3
    with pytest.raises(InputError, match="focus_rate 1.5"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["focus_rate=1.5", "focus_kinds=[closest]"])
    with pytest.raises(InputError, match="focus_rate needs focus_kinds"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["focus_rate=0.5"])
    with pytest.raises(InputError, match="unknown query kinds 'nearest'"):
        load_vlm_pretrain_config("configs/demo/toy_llava.yaml", ["focus_kinds=[nearest]", "focus_rate=0.5"])
