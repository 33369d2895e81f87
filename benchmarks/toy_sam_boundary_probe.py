"""Does a SAM image embedding know where two touching shapes of one colour meet? A linear probe per embedding cell.

    python benchmarks/toy_sam_boundary_probe.py artifacts/demo/toy_sam
    python benchmarks/toy_sam_boundary_probe.py reasonseg/assets/demo_model      # the SAM inside a reasonseg model
    python benchmarks/toy_sam_boundary_probe.py pixels                           # the raw 8x8x3 patches, for scale

Each 8x8-pixel cell of the 256-pixel SAM input (one embedding position) that lies on shapes only is sorted into: inside
one shape, on the boundary of two touching shapes of the same colour name, or of two of different colours. A
logistic regression on the embedding (standardised, class-balanced, L2 1e-3) is fitted on cells of the first
``--train-scenes`` train scenes and scored on the first ``--val-scenes`` val scenes, once per boundary kind against
the inside cells. Printed: the cell counts and the balanced accuracy on val (0.5 = the embedding says nothing). The
demo model's masks spill onto a touching shape of the same colour (docs/demo_model.md, stage 3, session 32); this
says whether the image encoder or the mask decoder is where that is lost.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reasonseg.data.toy_world import generate_scene, split_seed
from reasonseg.processing.sam_transform import SamTransform

CELL = 8  # pixels per embedding position at the toy SAM's 256-pixel input (patch size 8)
INSIDE, SAME_COLOUR, OTHER_COLOUR = 0, 1, 2
KIND_NAMES = {SAME_COLOUR: "same-colour boundary", OTHER_COLOUR: "different-colour boundary"}


def cell_kinds(labels: np.ndarray, colours: list[str], cell: int = CELL) -> list[tuple[int, int, int]]:
    """``(row, column, kind)`` of every whole cell of ``labels`` (object index per pixel, -1 background) that holds no
    background and at most two objects: INSIDE one, or the boundary of two of the SAME_COLOUR or OTHER_COLOUR."""
    found = []
    for row in range(labels.shape[0] // cell):
        for column in range(labels.shape[1] // cell):
            ids = np.unique(labels[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell])
            if (ids < 0).any() or len(ids) > 2:
                continue
            kind = INSIDE if len(ids) == 1 else SAME_COLOUR if colours[ids[0]] == colours[ids[1]] else OTHER_COLOUR
            found.append((row, column, kind))
    return found


def balanced_probe(train_x, train_y, test_x, test_y, l2: float = 1e-3) -> float:
    """Balanced accuracy on the test set of a class-balanced logistic regression fitted (L-BFGS) on the train set."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.tensor((train_x - mean) / std, dtype=torch.float32)
    x_test = torch.tensor((test_x - mean) / std, dtype=torch.float32)
    y = torch.tensor(train_y, dtype=torch.float32)
    share = float(y.mean())
    weights = torch.where(y > 0, 0.5 / share, 0.5 / (1 - share))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y, weight=weights) + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x_test @ w + b > 0).numpy()
    test_y = np.asarray(test_y).astype(bool)
    return 0.5 * float((predicted[test_y]).mean() + (~predicted[~test_y]).mean())


def embedder(source: str):
    """``pixels -> [C, 32, 32]`` for one padded SAM input: raw patches, a toy SAM folder, or a reasonseg model's SAM."""
    if source == "pixels":
        return lambda px: px.reshape(3, 32, CELL, 32, CELL).permute(0, 2, 4, 1, 3).reshape(3 * CELL * CELL, 32, 32)
    if (Path(source) / "reasonseg_processor.json").is_file():
        from reasonseg.inference.segmenter import Segmenter

        model = Segmenter.from_pretrained(source).model
        return lambda px: model.encode_sam_images(px[None])[0].float()
    from transformers import SamModel

    sam = SamModel.from_pretrained(source).eval()
    return lambda px: sam.get_image_embeddings(px[None])[0].float()


@torch.no_grad()
def cells_of(split: str, scenes: int, embed) -> tuple[np.ndarray, np.ndarray]:
    transform = SamTransform(32 * CELL)
    features, kinds = [], []
    for index in range(scenes):
        scene = generate_scene(split_seed(split, index))
        pixels, (height, width) = transform(Image.fromarray(scene.image))
        embedding = embed(pixels)
        labels = np.asarray(Image.fromarray(scene.labels.astype(np.int32)).resize((width, height), Image.NEAREST))
        for row, column, kind in cell_kinds(labels, [o.colour for o in scene.objects]):
            features.append(embedding[:, row, column].numpy())
            kinds.append(kind)
    return np.array(features), np.array(kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a toy SAM folder, a reasonseg model folder, or 'pixels'")
    parser.add_argument("--train-scenes", type=int, default=5000)
    parser.add_argument("--val-scenes", type=int, default=1500)
    args = parser.parse_args()
    embed = embedder(args.source)
    train_x, train_k = cells_of("train", args.train_scenes, embed)
    val_x, val_k = cells_of("val", args.val_scenes, embed)
    print(f"cells inside / same-colour boundary / other-colour boundary: train {np.bincount(train_k, minlength=3)}, "
          f"val {np.bincount(val_k, minlength=3)}")
    for kind, name in KIND_NAMES.items():
        train, val = np.isin(train_k, [INSIDE, kind]), np.isin(val_k, [INSIDE, kind])
        accuracy = balanced_probe(train_x[train], train_k[train] == kind, val_x[val], val_k[val] == kind)
        print(f"{name} vs inside: balanced accuracy on val {accuracy:.3f}")


if __name__ == "__main__":
    main()
