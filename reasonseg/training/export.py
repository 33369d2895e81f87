"""`reasonseg export`: a training run -> a standard reasonseg checkpoint with LoRA merged into the weights."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoints.convert import save_native
from ..checkpoints.loading import load_model_and_processor
from ..errors import CheckpointError
from .config import _build
from .model_setup import prepare_for_training, trainable_token_ids
from .trainer import CONFIG_FILE, latest_checkpoint, load_trained_weights


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Rebuild the run's model, load its latest (or given) checkpoint, merge LoRA, save natively.

    The base is always rebuilt in full precision: a QLoRA run (``load_in_4bit``/``load_in_8bit``) has its LoRA
    merged into the unquantised weights, and the result loads with or without quantisation like any checkpoint.
    """
    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"{run_dir} holds no finished checkpoint-<step> directory; train first")
    config = _build(json.loads((checkpoint / CONFIG_FILE).read_text()))
    model, processor = load_model_and_processor(config.model, precision="fp32", device="cpu")
    peft_model = prepare_for_training(model, config, trainable_token_ids(processor))
    load_trained_weights(checkpoint, peft_model)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return save_native(merged, processor, out_dir)
