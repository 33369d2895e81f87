"""Training-step throughput and memory of the tiny model on CPU, with and without gradient checkpointing.

    python benchmarks/train_step.py [--steps 5] [--rounds 3] [--batch-size 2] [--conversations 3] [--threads 2]

Steps go through the trainer's own pieces: the LoRA set-up of
:func:`reasonseg.training.model_setup.prepare_for_training`, the collator, the optimiser, and one forward + backward
+ clip + optimiser step per batch (synthetic 480x640 images, one square mask per question). Reported per mode:

* samples/s: images per second, the median over rounds that alternate the two modes on one model (so a busy
  machine slows both alike), with the rounds' range, conversations/s, and CPU seconds per image;
* peak RSS: in a fresh process per mode, the peak resident memory (model, optimiser, data and the steps together),
  and how far the steps raised it above the peak before the first step;
* saved activations: bytes of the tensors autograd keeps for backward during one forward pass -- the memory
  gradient checkpointing trades for recomputation (the language model's layers are checkpointed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

PROMPTS = ["the red square", "the square on the grey background", "the red block"]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _samples(count: int, conversations: int, seed: int = 0):
    from reasonseg.data.templates import SHORT_QUESTIONS
    from reasonseg.training.collate import TrainingSample

    rng = np.random.RandomState(seed)
    samples = []
    for index in range(count):
        image = np.full((480, 640, 3), 200, np.uint8)
        mask = np.zeros((480, 640), np.uint8)
        y, x = rng.randint(20, 300, 2)
        image[y : y + 120, x : x + 120] = [220, 20, 20]
        mask[y : y + 120, x : x + 120] = 1
        turns = [[(SHORT_QUESTIONS[k % len(SHORT_QUESTIONS)].format(target=PROMPTS[k % len(PROMPTS)]),
                   "Sure, it is [SEG].")] for k in range(conversations)]
        samples.append(TrainingSample(Image.fromarray(image), turns, np.stack([mask] * conversations), f"synthetic{index}"))
    return samples


def saved_activation_bytes(model, batch) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward during one forward pass."""
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**batch)
    output.loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def _setup(args, gradient_checkpointing: bool):
    from reasonseg.modeling.tiny import build_tiny_model
    from reasonseg.training.collate import ReasonSegCollator
    from reasonseg.training.config import DatasetSpec, TrainingConfig
    from reasonseg.training.model_setup import prepare_for_training, trainable_token_ids
    from reasonseg.training.trainer import build_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = build_tiny_model(seed=0)
    config = TrainingConfig(model="tiny", datasets=[DatasetSpec("custom", "-")], warmup_steps=0, lr=1e-4,
                            gradient_checkpointing=gradient_checkpointing)
    model = prepare_for_training(model, config, trainable_token_ids(processor))
    model.train()
    optimizer, _ = build_optimizer(model, config)
    collator = ReasonSegCollator(processor)
    batches = [collator(_samples(args.batch_size, args.conversations, seed=i)) for i in range(args.steps + 1)]
    parameters = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        output = model(**batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, batches, step


def set_checkpointing(model, enabled: bool) -> None:
    from reasonseg.training.model_setup import set_activation_checkpointing

    set_activation_checkpointing(model.get_base_model().language_model, enabled)


def memory_worker(args) -> dict:
    """One mode in a fresh process: its peak RSS, and the activations saved for backward."""
    model, batches, step = _setup(args, args.gradient_checkpointing)
    activations = saved_activation_bytes(model, batches[0])
    before = _peak_rss_mib()
    for batch in batches:
        step(batch)
    peak = _peak_rss_mib()
    return {"peak_rss_mib": peak, "rss_rise_in_steps_mib": peak - before, "saved_activations_mib": activations / 2**20}


def throughput(args) -> dict[bool, list[tuple[float, float]]]:
    """Both modes on one model, alternating round by round (a busy machine slows both alike); per mode and round
    ``(samples/s, CPU seconds per sample)`` over ``args.steps`` steps after one warm-up step."""
    model, batches, step = _setup(args, False)
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for checkpointing in (False, True):
            set_checkpointing(model, checkpointing)
            step(batches[0])
            started, cpu_started = time.perf_counter(), time.process_time()
            for batch in batches[1:]:
                step(batch)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            samples = args.steps * args.batch_size
            results[checkpointing].append((samples / elapsed, cpu / samples))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both modes (median reported)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=3, help="questions per image (LISA: 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return
    print(f"tiny model, CPU, {args.threads} threads, batch {args.batch_size} images x {args.conversations} "
          f"questions; {args.rounds} rounds x {args.steps} timed steps per mode")
    memory = {}
    for checkpointing in (False, True):
        command = [sys.executable, __file__, "--memory-worker", "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--conversations", str(args.conversations), "--threads", str(args.threads)]
        if checkpointing:
            command.append("--gradient-checkpointing")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"benchmark worker failed:\n{done.stderr[-2000:]}")
        memory[checkpointing] = json.loads(done.stdout.strip().splitlines()[-1])
    speeds = throughput(args)
    for checkpointing in (False, True):
        rates = sorted(r for r, _ in speeds[checkpointing])
        cpu = float(np.median([c for _, c in speeds[checkpointing]]))
        mem = memory[checkpointing]
        print(f"gradient checkpointing {'on ' if checkpointing else 'off'}: {np.median(rates):.2f} samples/s "
              f"(rounds {rates[0]:.2f}-{rates[-1]:.2f}; {np.median(rates) * args.conversations:.2f} conversations/s; "
              f"{cpu:.2f} CPU-s/sample), peak RSS {mem['peak_rss_mib']:.0f} MiB "
              f"(+{mem['rss_rise_in_steps_mib']:.0f} MiB in the steps), "
              f"saved activations {mem['saved_activations_mib']:.2f} MiB/step")
    off = float(np.median([r for r, _ in speeds[False]]))
    on = float(np.median([r for r, _ in speeds[True]]))
    print(f"checkpointing: {on / off:.2f}x the throughput, "
          f"{memory[True]['saved_activations_mib'] / max(memory[False]['saved_activations_mib'], 1e-9):.2f}x "
          "the saved activations")


if __name__ == "__main__":
    main()
