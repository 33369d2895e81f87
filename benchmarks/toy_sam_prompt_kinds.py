"""Which kind of `[SEG]` prompt can the demo's toy SAM (stage 1) learn to follow? Decides what stage 3 must teach.

    python benchmarks/toy_sam_prompt_kinds.py runs/demo/toy_sam/model [--steps 400] [--kinds identity cell both]

The image encoder stays frozen (as in LISA's training); the mask decoder and a stand-in prompt are trained with
stage 3's mask losses (2 x BCE + 0.5 x Dice), 8 scenes per step, on every object of each scene:

- ``identity``: what the object is, with no place: learned embeddings of its colour, shape and size, summed (what an
  LM can put into `[SEG]` when it only names the target);
- ``cell``: where it is, with no identity: SAM's own positive-point token at the centre of the 8x8 grid cell that the
  world's grounded answers name ("... at (3, 6) [SEG]");
- ``both``: their sum.

Prints the validation mean IoU (40 val scenes, every object, in SAM's padded low-resolution frame) and the share of
objects with IoU > 0.5, every 100 steps.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SamModel

from reasonseg.data.toy_world import generate_scene, split_seed
from reasonseg.data.toy_world.queries import GROUNDING_GRID, grid_cell
from reasonseg.data.toy_world.vocab import COLOUR_NAMES, SHAPES, SIZE_NAMES
from reasonseg.modeling.losses import mask_bce, mask_dice
from reasonseg.modeling.point_prompts import positive_point_embeddings
from reasonseg.modeling.sam import decode_seg_masks
from reasonseg.processing.sam_transform import SamTransform
from reasonseg.training.sam_pretrain import padded_mask


def encode_scenes(sam: SamModel, split: str, count: int, first: int = 0) -> list[tuple[torch.Tensor, list[dict]]]:
    """Frozen image embeddings of ``count`` scenes and, per object, its attributes, cell centre and padded mask."""
    size = sam.config.vision_config.image_size
    transform = SamTransform(size)
    scenes = []
    with torch.no_grad():
        for index in range(first, first + count):
            scene = generate_scene(split_seed(split, index))
            pixels, resized = transform(Image.fromarray(scene.image))
            scale = resized[0] / scene.height
            objects = []
            for obj in scene.objects:
                mask = padded_mask(obj.mask, resized, size)
                column, row = grid_cell(obj, scene.width, scene.height)
                centre = ((column + 0.5) * scene.width / GROUNDING_GRID * scale,
                          (row + 0.5) * scene.height / GROUNDING_GRID * scale)
                objects.append({"identity": (SHAPES.index(obj.shape), COLOUR_NAMES.index(obj.colour),
                                             SIZE_NAMES.index(obj.size)),
                                "centre": centre, "mask": torch.from_numpy(mask)})
            scenes.append((sam.get_image_embeddings(pixels[None]), objects))
    return scenes


class StandInPrompts(torch.nn.Module):
    def __init__(self, sam: SamModel, kind: str):
        super().__init__()
        width = sam.config.mask_decoder_config.hidden_size
        self.sam, self.kind = sam, kind
        self.tables = torch.nn.ModuleList(torch.nn.Embedding(n, width) for n in (len(SHAPES), len(COLOUR_NAMES),
                                                                                   len(SIZE_NAMES)))
        for table in self.tables:
            torch.nn.init.normal_(table.weight, std=0.5)

    def forward(self, objects: list[dict]) -> torch.Tensor:
        prompts = 0
        if self.kind in ("identity", "both"):
            index = torch.tensor([o["identity"] for o in objects])
            prompts = sum(table(index[:, k]) for k, table in enumerate(self.tables))
        if self.kind in ("cell", "both"):
            prompts = prompts + positive_point_embeddings(self.sam, torch.tensor([o["centre"] for o in objects]))
        return prompts


def losses_and_ious(sam, prompts, embedding, objects) -> tuple[torch.Tensor, torch.Tensor]:
    size = sam.config.vision_config.image_size
    low_res, _ = decode_seg_masks(sam, embedding, prompts(objects))
    logits = F.interpolate(low_res[:, None].float(), (size, size), mode="bilinear", align_corners=False)[:, 0]
    targets = torch.stack([o["mask"] for o in objects])
    loss = 2 * mask_bce(logits, targets).mean() + 0.5 * mask_dice(logits, targets).mean()
    predicted, truth = logits > 0, targets > 0
    ious = (predicted & truth).flatten(1).sum(1) / (predicted | truth).flatten(1).sum(1).clamp(min=1)
    return loss, ious


def train_kind(base: SamModel, kind: str, train, val, steps: int) -> None:
    sam = copy.deepcopy(base)
    prompts = StandInPrompts(sam, kind)
    optimizer = torch.optim.AdamW([*sam.mask_decoder.parameters(), *prompts.tables.parameters()], lr=1e-3,
                                  weight_decay=0.0)
    rng = np.random.default_rng(0)
    began = time.time()
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = sum(losses_and_ious(sam, prompts, *train[k])[0] for k in rng.integers(0, len(train), 8)) / 8
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            with torch.no_grad():
                ious = torch.cat([losses_and_ious(sam, prompts, *scene)[1] for scene in val])
            print(f"{kind:<8} step {step:>4}: val mIoU {ious.mean():.3f}, IoU > 0.5 for {(ious > 0.5).float().mean():.3f}"
                  f" of {len(ious)} objects ({time.time() - began:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sam", help="the toy SAM (stage 1) model folder")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--train-scenes", type=int, default=600)
    parser.add_argument("--kinds", nargs="+", default=["identity", "cell", "both"], choices=["identity", "cell", "both"])
    args = parser.parse_args()
    torch.manual_seed(0)
    base = SamModel.from_pretrained(args.sam).eval()
    train = encode_scenes(base, "train", args.train_scenes, first=900_000)  # far from the scenes stage 1 saw
    val = encode_scenes(base, "val", 40)
    for kind in args.kinds:
        train_kind(base, kind, train, val, args.steps)


if __name__ == "__main__":
    main()
