"""Can the demo's toy LLaVA (stage 2) say where things are? Two figures for a saved model or a training checkpoint.

    python benchmarks/toy_llava_grounding.py runs/demo/toy_llava/model
    python benchmarks/toy_llava_grounding.py runs/demo/toy_llava/checkpoint-1300
    python benchmarks/toy_llava_grounding.py artifacts/demo/toy_llava --scenes 60

1. Position in the image tokens: R^2 of a ridge read-out of each patch's (column, row) from the vision tower's
   hidden states and from the projector's output (half the scenes fit, half scored). Near 0: the LM is given no
   way to know where a patch is.
2. Grounding: on val scenes, teacher-forced referring turns ("Which shape is the red star?" -> "It is the small red
   star at (3, 6)."), the share of coordinate tokens predicted exactly and of turns with both right, and how many
   distinct cells the model predicts (1 = it says the same place for everything). Chance is about 1/8 per token.
   Also: whether the said cell's centre lies on the target (what a point prompt there needs), by objects in the scene.
3. The reverse ("What is at (3, 6)?" -> "It is the small red star."): the share of answers right in every token.
4. List turns, several targets at once ("Segment all the stars." -> "They are the small red star at (3, 6) and the
   large blue star at (5, 2).", teacher-forced): the share of coordinate tokens right and of turns with every
   target's cell right (what stage 3's several-target answers need before each [SEG]).
5. For a checkpoint trained with the target-patch aid (image placed after the question): per query family, the share
   of referring turns whose highest-scoring image token (by the aid's head) lies on the queried object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

from reasonseg.data.toy_world import generate_sample, generate_scene, split_seed
from reasonseg.data.toy_world.queries import GROUNDING_GRID, grid_cell
from reasonseg.data.toy_world.turns import (
    list_queries,
    list_turn,
    objects_alone_in_their_cell,
    referring_queries,
    referring_turn,
    region_turn,
)
from reasonseg.training.vlm_pretrain import (
    IGNORE_INDEX,
    TRAINING_AIDS_FILE,
    TargetPatchHead,
    build_image_processor,
    build_llava,
    encode_conversation,
    is_training_aid,
    llava_forward,
    load_vlm_pretrain_config,
    target_patch_labels,
)


def target_head_from(tensors: dict) -> TargetPatchHead | None:
    prefix = "target_patch_head."
    weights = {name.removeprefix(prefix): value for name, value in tensors.items() if name.startswith(prefix)}
    if not weights:
        return None
    head = TargetPatchHead(weights["linear.weight"].shape[1])
    head.load_state_dict(weights)
    return head


def trained_config(path: Path, given: str | None):
    """The stage-2 config ``path`` was trained with: ``given``, else the one saved with it (a committed folder's
    ``training_config.yaml``, a run's ``config.yaml`` beside its ``model`` and ``checkpoint-<step>`` folders). The
    image placement and attention must be the model's own: under another layout the figures fall to chance."""
    if given:
        return load_vlm_pretrain_config(given)
    for candidate in (path / "training_config.yaml", path.parent / "config.yaml"):
        if candidate.is_file():
            return load_vlm_pretrain_config(candidate)
    raise SystemExit(f"{path}: no training_config.yaml in it and no config.yaml beside it; pass --config with the "
                     "stage-2 config it was trained with")


def load(path: Path, config_path: str | None):
    """``(model, tokenizer, image processor, config, target-patch head or None)``; the head comes from a checkpoint's
    weights or from the ``training_aids.safetensors`` kept beside a saved model."""
    config = trained_config(path, config_path)
    if (path / "config.json").is_file():
        model = LlavaForConditionalGeneration.from_pretrained(path)
        aids = path / TRAINING_AIDS_FILE
        head = target_head_from(load_file(str(aids))) if aids.is_file() else None
        return model.eval(), AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path), config, head
    tokenizer = AutoTokenizer.from_pretrained(path.parent / "tokenizer")
    model = build_llava(config, tokenizer)
    state = torch.load(path / "training_state.pt", weights_only=False, map_location="cpu")["trainable"]
    model.load_state_dict({name: value for name, value in state.items() if not is_training_aid(name)}, strict=True)
    return model.eval(), tokenizer, build_image_processor(config), config, target_head_from(state)


def ridge_r2(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    half = len(features) // 2
    mean, std = features[:half].mean(0), features[:half].std(0) + 1e-6
    design = np.c_[(features - mean) / std, np.ones(len(features))]
    weights = np.linalg.solve(design[:half].T @ design[:half] + 10 * np.eye(design.shape[1]),
                              design[:half].T @ targets[:half])
    residual = design[half:] @ weights - targets[half:]
    return 1 - (residual**2).sum(0) / ((targets[half:] - targets[half:].mean(0)) ** 2).sum(0)


@torch.no_grad()
def position_r2(model, image_processor, scenes: int) -> dict[str, np.ndarray]:
    tower, projected, cells = [], [], []
    for index in range(scenes):
        scene = generate_scene(split_seed("train", 5_000 + index))
        pixels = image_processor(images=[Image.fromarray(scene.image)], return_tensors="pt")["pixel_values"]
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        tower.append(hidden[0].numpy())
        projected.append(model.model.multi_modal_projector(hidden)[0].numpy())
        side = int(round(hidden.shape[1] ** 0.5))
        cells.append([[k % side, k // side] for k in range(hidden.shape[1])])
    targets = np.concatenate(cells).astype(float)
    return {"tower": ridge_r2(np.concatenate(tower), targets),
            "projector": ridge_r2(np.concatenate(projected), targets)}


def teacher_forced(model, tokenizer, config, pixels, turn: tuple[str, str], state_layer: int | None = None):
    """Predicted next tokens, the labels they should match (``IGNORE_INDEX`` outside the answer), and with
    ``state_layer`` the image tokens' hidden states after that many LM layers (else ``None``)."""
    ids, labels = encode_conversation(tokenizer, config, [turn])
    ids = torch.tensor([ids])
    out = llava_forward(model, config, ids, pixel_values=pixels, output_hidden_states=state_layer is not None)
    states = None if state_layer is None else out.hidden_states[state_layer][ids == model.config.image_token_id]
    return out.logits[0, :-1].argmax(-1).tolist(), labels[1:], states


def digit_tokens(tokenizer) -> dict[int, int]:
    """Token id -> grid digit, for the digits an answer's "(column, row)" is written with."""
    digit_of = {tokenizer.convert_tokens_to_ids(prefix + str(d)): d for d in range(GROUNDING_GRID) for prefix in ("", "Ġ")}
    digit_of.pop(tokenizer.unk_token_id, None)
    return digit_of


@torch.no_grad()
def list_grounding(model, tokenizer, image_processor, config, scenes: int, first: int = 0) -> dict:
    """Teacher-forced list turns on val scenes: coordinate tokens right, and turns with every coordinate right."""
    digit_of = digit_tokens(tokenizer)
    right = total = every = turns = 0
    for index in range(first, first + scenes):
        sample = generate_sample(split_seed("val", index))
        pixels = None
        for query in list_queries(sample):
            if pixels is None:
                pixels = image_processor(images=[Image.fromarray(sample.image)], return_tensors="pt")["pixel_values"]
            predicted, expected, _ = teacher_forced(model, tokenizer, config, pixels, list_turn(sample, query))
            places = [k for k, token in enumerate(expected) if token != IGNORE_INDEX and token in digit_of]
            hits = [predicted[k] == expected[k] for k in places]
            right, total, every, turns = right + sum(hits), total + len(hits), every + all(hits), turns + 1
    return {"token_accuracy": right / max(total, 1), "all_right": every / max(turns, 1), "turns": turns}


@torch.no_grad()
def grounding(model, tokenizer, image_processor, config, scenes: int, first: int = 0, head=None) -> dict:
    """The grounding figures; with the target-patch ``head``, also ``marking_by_family``: per family, ``(share of
    referring turns whose top-scoring image token is on the target, turns)``."""
    digit_of = digit_tokens(tokenizer)
    right = total = both = turns = near = inside = region_right = region_turns = 0
    predicted_cells = set()
    by_count: dict[str, list[int]] = {}  # objects in the scene -> [turns, said cell's centre on the target]
    marking: dict[str, list[int]] = {}  # family -> [turns, head's top image token on the target]
    state_layer = config.target_patch_layer if head is not None else None
    for index in range(first, first + scenes):
        sample = generate_sample(split_seed("val", index))
        pixels = image_processor(images=[Image.fromarray(sample.image)], return_tensors="pt")["pixel_values"]
        for query in referring_queries(sample):
            target = sample.objects[query.targets[0]]
            column, row = grid_cell(target, sample.width, sample.height)
            predicted, expected, states = teacher_forced(model, tokenizer, config, pixels, referring_turn(sample, query),
                                                         state_layer)
            if states is not None:
                top = int(head.linear(states)[:, 0].argmax())
                labels = target_patch_labels(sample, target, config.image_size // config.patch_size)
                bucket = marking.setdefault(query.family, [0, 0])
                bucket[0] += 1
                bucket[1] += bool(labels[top] == 1)
            places = [k for k, token in enumerate(expected) if token != IGNORE_INDEX and token in digit_of][-2:]
            hits = [predicted[k] == expected[k] for k in places]
            right, total, both, turns = right + sum(hits), total + len(hits), both + all(hits), turns + 1
            said = [digit_of.get(predicted[k]) for k in places]
            if len(said) == 2 and None not in said:
                near += abs(said[0] - column) <= 1 and abs(said[1] - row) <= 1
                x = int((said[0] + 0.5) * sample.width / GROUNDING_GRID)
                y = int((said[1] + 0.5) * sample.height / GROUNDING_GRID)
                on_target = bool(target.mask[y, x])
                inside += on_target
                bucket = by_count.setdefault("3+" if len(sample.objects) >= 3 else str(len(sample.objects)), [0, 0])
                bucket[0] += 1
                bucket[1] += on_target
            predicted_cells.add(tuple(predicted[k] for k in places))
        for cell, obj in objects_alone_in_their_cell(sample):
            predicted, expected, _ = teacher_forced(model, tokenizer, config, pixels, region_turn(cell, obj))
            region_right += all(predicted[k] == token for k, token in enumerate(expected) if token != IGNORE_INDEX)
            region_turns += 1
    return {"region_right": region_right / max(region_turns, 1), "region_turns": region_turns,
            "token_accuracy": right / max(total, 1), "both_right": both / max(turns, 1), "turns": turns,
            "within_one_cell": near / max(turns, 1), "centre_on_target": inside / max(turns, 1),
            "centre_on_target_by_objects": {k: (v[1] / v[0], v[0]) for k, v in sorted(by_count.items())},
            "distinct_predicted_cells": len(predicted_cells),
            "marking_by_family": {family: (hits / n, n) for family, (n, hits) in marking.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a saved toy LLaVA (model folder) or a checkpoint-<step> folder")
    parser.add_argument("--config", help="the stage-2 config it was trained with (default: the one saved with it)")
    parser.add_argument("--scenes", type=int, default=25)
    parser.add_argument("--first-scene", type=int, default=0, help="first val scene index")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer, image_processor, config, head = load(args.model, args.config)
    for where, r2 in position_r2(model, image_processor, 60).items():
        print(f"position read-out R^2 from the {where:<9}: column {r2[0]:.3f}  row {r2[1]:.3f}")
    if head is not None and config.image_placement != "after_text":
        head = None  # an image token before the question cannot mark the target
    scores = grounding(model, tokenizer, image_processor, config, args.scenes, args.first_scene, head)
    print(f"grounding on {scores['turns']} val referring turns: coordinate tokens right {scores['token_accuracy']:.3f} "
          f"(chance ~{1 / GROUNDING_GRID:.3f}), both right {scores['both_right']:.3f}, "
          f"{scores['distinct_predicted_cells']} distinct cells predicted; within one cell {scores['within_one_cell']:.3f}, "
          f"said cell's centre on the target {scores['centre_on_target']:.3f}")
    print(f"region turns (\"What is at (3, 6)?\" -> \"It is the small red star.\"), every answer token right: "
          f"{scores['region_right']:.3f} of {scores['region_turns']}")
    print("said cell's centre on the target, by objects in the scene: " + ", ".join(
        f"{count}: {share:.2f} of {n}" for count, (share, n) in scores["centre_on_target_by_objects"].items()))
    listed = list_grounding(model, tokenizer, image_processor, config, args.scenes, args.first_scene)
    print(f"list turns (\"Segment all the stars.\" -> \"They are the ... at (3, 6) and the ... at (5, 2).\"): "
          f"coordinate tokens right {listed['token_accuracy']:.3f}, every target's cell right {listed['all_right']:.3f} "
          f"of {listed['turns']}")
    if scores["marking_by_family"]:
        print("target-patch head's top image token on the target, by family: " + ", ".join(
            f"{family} {share:.2f} of {n}" for family, (share, n) in scores["marking_by_family"].items()))


if __name__ == "__main__":
    main()
