"""Can an attention read-out find a named object's place in the toy LLaVA's image tokens? A probe of stage 2.

    python benchmarks/toy_llava_retrieval_probe.py runs/demo/toy_llava/model [--features oracle] [--logit-scale 5]

The LM must learn, for "It is the red star at (", to attend from its text to the image tokens of the red star and
read their place. This trains that step alone on frozen image tokens (the projector's output): a query from learned
colour and shape embeddings, one softmax attention over the 64 tokens, an MLP read-out of the grid cell (column and
row of the object's innermost point, 8 ways each); Adam, batches of 64 objects from scenes with two or more objects.

``--features oracle`` replaces the image tokens by what a perfect tower would say: each patch's share of every colour
and one-hot row and column. If the probe learns on oracle tokens but not on the model's, the tower's tokens are what
keeps the LM from learning where things are. ``--logit-scale`` multiplies the attention logits (1: the plain dot
product, whose near-uniform start makes retrieval slow to begin).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from toy_llava_grounding import load  # the sibling benchmark (scripts run with benchmarks/ on sys.path)

from reasonseg.data.toy_world import generate_scene, split_seed
from reasonseg.data.toy_world.queries import GROUNDING_GRID, grid_cell
from reasonseg.data.toy_world.vocab import COLOUR_NAMES, SHAPES


def oracle_tokens(scene) -> torch.Tensor:
    """Per patch: share of each colour (and of background), then one-hot row and column."""
    labels = np.full((scene.height, scene.width), len(COLOUR_NAMES))
    for obj in scene.objects:
        labels[obj.mask] = COLOUR_NAMES.index(obj.colour)
    grid, colours = GROUNDING_GRID, len(COLOUR_NAMES) + 1
    tokens = torch.zeros(grid * grid, colours + 2 * grid)
    for k in range(grid * grid):
        row, column = divmod(k, grid)
        patch = labels[row * scene.height // grid:(row + 1) * scene.height // grid,
                       column * scene.width // grid:(column + 1) * scene.width // grid]
        tokens[k, :colours] = torch.from_numpy(np.bincount(patch.ravel(), minlength=colours) / patch.size)
        tokens[k, colours + row] = tokens[k, colours + grid + column] = 1
    return tokens


@torch.no_grad()
def collect(model, processor, split: str, num_objects: int, first: int, oracle: bool):
    tokens, queries, cells = [], [], []
    index = first
    while len(tokens) < num_objects:
        scene = generate_scene(split_seed(split, index))
        index += 1
        if len(scene.objects) < 2:
            continue
        if oracle:
            image_tokens = oracle_tokens(scene)
        else:
            pixels = processor(images=[Image.fromarray(scene.image)], return_tensors="pt")["pixel_values"]
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
            image_tokens = model.model.multi_modal_projector(hidden)[0]
        for obj in scene.objects:
            tokens.append(image_tokens)
            queries.append([COLOUR_NAMES.index(obj.colour), SHAPES.index(obj.shape)])
            cells.append(grid_cell(obj, scene.width, scene.height))
    return torch.stack(tokens), torch.tensor(queries), torch.tensor(cells)


class RetrievalProbe(torch.nn.Module):
    def __init__(self, width: int, logit_scale: float, key_width: int = 64):
        super().__init__()
        self.colour = torch.nn.Embedding(len(COLOUR_NAMES), key_width)
        self.shape = torch.nn.Embedding(len(SHAPES), key_width)
        self.key = torch.nn.Linear(width, key_width)
        self.value = torch.nn.Linear(width, 64)
        self.read_out = torch.nn.Linear(64, 2 * GROUNDING_GRID)
        self.scale = logit_scale / key_width**0.5

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        query = self.colour(queries[:, 0]) + self.shape(queries[:, 1])
        attention = (torch.einsum("bk,bnk->bn", query, self.key(tokens)) * self.scale).softmax(-1)
        return self.read_out(F.gelu(torch.einsum("bn,bnd->bd", attention, self.value(tokens))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a saved toy LLaVA (model folder) or a checkpoint-<step> folder")
    parser.add_argument("--config", help="the stage-2 config it was trained with (default: the one saved with it)")
    parser.add_argument("--features", choices=["model", "oracle"], default="model")
    parser.add_argument("--logit-scale", type=float, default=1.0)
    parser.add_argument("--token-norm", choices=["global", "layer"], default="global")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--train-objects", type=int, default=20000,
                        help="objects whose image tokens the probe trains on (few: it memorises 256-wide tokens)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, _, processor, _, _ = load(Path(args.model), args.config)
    oracle = args.features == "oracle"
    train = collect(model, processor, "train", args.train_objects, 3_000_000, oracle)
    val = collect(model, processor, "val", 400, 0, oracle)
    if args.token_norm == "layer":  # each token on its own, as the LM's RMSNorm does before its attention
        train, val = [(F.layer_norm(t, t.shape[-1:]), q, c) for t, q, c in (train, val)]
    else:  # every channel standardised over the training tokens
        mean, std = train[0].mean((0, 1)), train[0].std((0, 1)) + 1e-5
        train, val = [((t - mean) / std, q, c) for t, q, c in (train, val)]
    probe = RetrievalProbe(train[0].shape[-1], args.logit_scale)
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)
    grid = GROUNDING_GRID
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(train[0]), (64,))
        logits = probe(train[0][batch], train[1][batch])
        loss = F.cross_entropy(logits[:, :grid], train[2][batch, 0]) + F.cross_entropy(logits[:, grid:], train[2][batch, 1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            with torch.no_grad():
                logits = probe(val[0], val[1])
            column = logits[:, :grid].argmax(-1) == val[2][:, 0]
            row = logits[:, grid:].argmax(-1) == val[2][:, 1]
            print(f"step {step}: train loss {loss.item():.3f}; val column right {column.float().mean():.3f}, row {row.float().mean():.3f}, "
                  f"both {(column & row).float().mean():.3f} (chance 0.125 / 0.016) of {len(column)} objects", flush=True)


if __name__ == "__main__":
    main()
