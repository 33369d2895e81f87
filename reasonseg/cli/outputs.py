"""Files written for one prediction by the CLI verbs: LISA's per-mask PNG and overlay, plus a JSON record."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..inference.mask_io import mask_record, save_prediction_files, write_prediction_json


def write_prediction_files(image: Image.Image, prediction, prompt: str, out_dir: Path, name: str) -> list[Path]:
    """``<name>_mask_<i>.png`` (0/255), ``<name>_masked_img_<i>.jpg`` (red blend, as LISA's chat), ``<name>.json``."""
    written = save_prediction_files(image, list(prediction.masks), out_dir, name)
    records = [mask_record(mask, score) for mask, score in zip(prediction.masks, prediction.scores)]
    json_path = write_prediction_json(Path(out_dir) / f"{name}.json", prompt, prediction.text, records,
                                      extra={"seg_forced": prediction.seg_forced})
    return written + [json_path]
