"""Where does a toy SAM (the demo model's stage 1) lose? Its masks from a perfect prompt, by the object's kind.

    python benchmarks/toy_sam_masks.py artifacts/demo/toy_sam [runs/demo/toy_sam_next/model ...] [--scenes 64]

For each toy SAM folder: the mean IoU of every object of the first ``--scenes`` val scenes, prompted by its innermost
point and by its box (the figures `reasonseg pretrain sam` validates with), split by the object's shape, size word
and visible share. A stage-3 model that names the right object and place cannot outline it better than its SAM does
from such a prompt, so this is the ceiling of the masks of right answers.

Last, the ceiling the low-resolution mask itself sets: each true mask taken down to the SAM's low-res mask grid
(area-averaged) and back up the way predictions are, scored against itself.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SamModel

from reasonseg.checkpoints.loading import read_sam_config
from reasonseg.data.toy_world import generate_scene, split_seed
from reasonseg.errors import CheckpointError
from reasonseg.modeling.sam import upscale_mask_logits
from reasonseg.processing.sam_transform import SamTransform
from reasonseg.training.sam_pretrain import padded_mask, prompted_object_ious

GROUPS = ("shape", "size", "visible")


def object_group(obj, group: str) -> str:
    if group == "visible":
        return "<90 %" if obj.area < 0.9 * obj.full_area else ">=90 %"
    return getattr(obj, group)


def mask_ious_by_group(model: SamModel, scenes: int) -> dict[tuple[str, str, str], list[float]]:
    """``{(prompt kind, group, value): [IoU, ...]}``, with group ``all`` for every object."""
    table = defaultdict(list)
    for _, obj, kind, iou in prompted_object_ious(model, model.config.vision_config.image_size, scenes):
        table[(kind, "all", "all")].append(iou)
        for group in GROUPS:
            table[(kind, group, object_group(obj, group))].append(iou)
    return table


def low_res_ceiling(image_size: int, low_res: int, scenes: int) -> list[float]:
    """IoU of each true mask with itself after a round trip through the ``low_res`` x ``low_res`` mask grid."""
    transform = SamTransform(image_size)
    ious = []
    for index in range(scenes):
        scene = generate_scene(split_seed("val", index))
        _, resized = transform(Image.fromarray(scene.image))
        for obj in scene.objects:
            padded = torch.from_numpy(padded_mask(obj.mask, resized, image_size))[None, None]
            low = F.interpolate(padded, (low_res, low_res), mode="area")[0] * 2 - 1
            back = upscale_mask_logits(low, resized, (scene.height, scene.width), image_size)[0].numpy() > 0
            ious.append(np.logical_and(back, obj.mask).sum() / np.logical_or(back, obj.mask).sum())
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="toy SAM folders (transformers SamModel)")
    parser.add_argument("--scenes", type=int, default=64, help="val scenes to score (default 64)")
    args = parser.parse_args()
    for folder in args.models:  # all checked before any is scored
        try:
            read_sam_config(folder)
        except CheckpointError as err:  # no config.json, one that is not JSON, or another model's
            parser.error(f"{folder} is not a saved toy SAM ({err}); "
                         f"pass a `reasonseg pretrain sam` model folder, e.g. artifacts/demo/toy_sam")
    torch.set_grad_enabled(False)
    for folder in args.models:
        model = SamModel.from_pretrained(folder).eval()
        table = mask_ious_by_group(model, args.scenes)
        vision = model.config.vision_config
        grid = vision.image_size // vision.patch_size
        print(f"{folder}: encoder {vision.hidden_size} wide x {vision.num_hidden_layers} blocks, {grid}x{grid} grid, "
              f"{4 * grid}x{4 * grid} low-res masks; {args.scenes} val scenes, "
              f"{len(table[('point', 'all', 'all')])} objects")
        for kind in ("point", "box"):
            parts = [f"all {np.mean(table[(kind, 'all', 'all')]):.3f}"]
            for group in GROUPS:
                values = sorted(value for (k, g, value) in table if k == kind and g == group)
                parts.append(", ".join(f"{value} {np.mean(table[(kind, group, value)]):.3f} "
                                       f"({len(table[(kind, group, value)])})" for value in values))
            print(f"  {kind:5s} mIoU: " + "; ".join(parts))
        ceiling = low_res_ceiling(vision.image_size, 4 * grid, args.scenes)
        print(f"  low-res mask ceiling: mean {np.mean(ceiling):.3f}, worst {np.min(ceiling):.3f}")


if __name__ == "__main__":
    main()
