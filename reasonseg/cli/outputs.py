"""Files written for one prediction: a mask PNG and an overlay per mask, and a JSON record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def mask_record(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0]
    return {"area": int(mask.sum()), "bbox": bbox, "rle": {"size": list(rle["size"]), "counts": rle["counts"].decode()}}


def write_prediction_files(image: Image.Image, prediction, prompt: str, out_dir: Path, name: str) -> list[Path]:
    """``<name>_mask_<i>.png`` (0/255), ``<name>_masked_img_<i>.jpg`` (red blend, as LISA's chat), ``<name>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(image, dtype=np.uint8)
    written = []
    for index, mask in enumerate(prediction.masks):
        mask_path = out_dir / f"{name}_mask_{index}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        overlay = rgb.copy()
        overlay[mask] = (rgb[mask] * 0.5 + np.array([255, 0, 0]) * 0.5).astype(np.uint8)
        overlay_path = out_dir / f"{name}_masked_img_{index}.jpg"
        Image.fromarray(overlay).save(overlay_path, quality=95)
        written += [mask_path, overlay_path]
    record = {
        "prompt": prompt,
        "answer": prediction.text,
        "seg_forced": prediction.seg_forced,
        "masks": [dict(mask_record(m), score=s) for m, s in zip(prediction.masks, prediction.scores)],
    }
    json_path = out_dir / f"{name}.json"
    temporary = json_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, json_path)
    return written + [json_path]
