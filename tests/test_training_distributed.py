"""Two processes (gloo, through `accelerate launch`) train to the same weights as one process with the same global
batch: 2 processes x batch 1 == 1 process x batch 1 x 2 accumulation steps.

Each process's micro-batch loss is what a one-process run computes for that micro-batch (CE a token mean over its
own supervised tokens), and gradients are averaged over processes as over accumulation steps, so SGD makes the two
runs agree to float rounding. Two things used to break it: the shipped MULTI_CPU accelerate config made
`accelerate launch` start a single process (half the global batch, silently), and dropout was seeded by the local
micro-step and process index rather than by the global micro-batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reasonseg.training.trainer import STATE_FILE

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _workspace(root: Path, tiny) -> Path:
    model, processor = tiny
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    rng = np.random.RandomState(1)
    lines = []
    for index in range(4):
        image = np.full((48, 64, 3), 200, np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        y, x = rng.randint(4, 28, 2)
        image[y : y + 14, x : x + 14] = [220, 20, 20]
        mask[y : y + 14, x : x + 14] = 255
        Image.fromarray(image).save(root / f"image{index}.png")
        Image.fromarray(mask).save(root / f"mask{index}.png")
        lines.append(json.dumps({"image": f"image{index}.png", "mask": f"mask{index}.png",
                                 "prompts": ["red square", "the square"]}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _overrides(root: Path, run: str, accumulation: int) -> list[str]:
    return [
        f"model={root / 'base'}",
        f"output_dir={root / run}",
        f"datasets=[{{kind: custom, path: {root / 'data.jsonl'}}}]",
        "batch_size=1",
        f"grad_accumulation_steps={accumulation}",
        "conversations_per_image=2",
        "optimizer=sgd",  # weights linear in the gradients: any sharding error shows undamped
        "lr=0.1",
        "warmup_steps=1",
        "steps_per_epoch=3",
        "save_every=3",
        "tensorboard=false",
        # validation sharded over the processes (3 items: one process pads its last round) and gathered
        f"val_data=custom:{root / 'data.jsonl'}",
        "val_max_samples=3",
        # lora.dropout stays at its default 0.05: dropout draws must follow the global micro-batch too
    ]


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny):
    root = _workspace(tmp_path, tiny)
    cli = [sys.executable, "-m", "reasonseg", "train", "--no-progress"]
    _run(cli + _overrides(root, "one", accumulation=2), REPO)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
              "--main_process_port", str(_free_port()), "-m", "reasonseg", "train", "--no-progress"]
    _run(launch + _overrides(root, "two", accumulation=1), REPO)

    one_info = json.loads((root / "one" / "run.json").read_text())
    two_info = json.loads((root / "two" / "run.json").read_text())
    assert (one_info["num_processes"], two_info["num_processes"]) == (1, 2)
    assert two_info["distributed_type"] == "MULTI_CPU"
    assert one_info["global_batch"] == two_info["global_batch"] == 2

    one = torch.load(root / "one" / "checkpoint-3" / STATE_FILE, weights_only=True)
    two = torch.load(root / "two" / "checkpoint-3" / STATE_FILE, weights_only=True)
    assert one["step"] == two["step"] == 3
    assert one["trainable"].keys() == two["trainable"].keys()
    model, processor = tiny
    start = {f"base_model.model.{name}": p.detach() for name, p in model.named_parameters()}
    for name, trained in one["trainable"].items():
        torch.testing.assert_close(two["trainable"][name], trained, atol=2e-6, rtol=0, msg=name)
    # not vacuous: LoRA, the mask decoder and the [SEG] rows of embed_tokens / lm_head all moved, other rows not
    assert all(one["trainable"][n].abs().max() > 0 for n in one["trainable"] if "lora_B" in n)  # LoRA B starts at 0
    moved = [name for name, trained in one["trainable"].items() if name in start and not torch.equal(start[name], trained)]
    assert any("mask_decoder" in n for n in moved)
    seg = processor.seg_token_id
    for name in ("base_model.model.language_model.model.embed_tokens.weight",
                 "base_model.model.language_model.lm_head.weight"):
        changed = (one["trainable"][name] != start[name]).any(dim=1).nonzero().flatten().tolist()
        assert changed == [seg], (name, changed)
    # the logged loss terms are the global batch's, the same in both runs, and so is the final validation
    logs = [[json.loads(line) for line in (root / run / "log.jsonl").read_text().splitlines()] for run in ("one", "two")]
    train_logs = [[r for r in log if r["event"] == "train"] for log in logs]
    assert len(train_logs[0]) == len(train_logs[1]) == 3
    for a, b in zip(*train_logs):
        for key in ("loss", "ce", "mask_bce", "mask_dice", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a, b)
    one_val, two_val = ([r for r in log if r["event"] == "validation"] for log in logs)
    assert len(one_val) == len(two_val) == 1 and one_val[0]["count"] == two_val[0]["count"] == 3
    assert (one_val[0]["intersection"], one_val[0]["union"]) == (two_val[0]["intersection"], two_val[0]["union"])
    assert one_val[0]["giou"] == pytest.approx(two_val[0]["giou"], abs=1e-9)
