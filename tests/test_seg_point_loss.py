"""The optional [SEG]-to-point auxiliary loss: where its target point lies, what it adds to the loss, where its
gradient goes, and that training with it lowers it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reasonseg.errors import InputError
from reasonseg.modeling.point_prompts import (
    innermost_point,
    innermost_points_in_sam_frame,
    positive_point_embeddings,
)
from reasonseg.training.collate import ReasonSegCollator, TrainingSample
from reasonseg.training.config import load_training_config
from reasonseg.training.model_setup import prepare_for_training


def test_innermost_point_lies_deep_inside_a_concave_mask():
    # a C shape: its centroid (about x=12) falls in the notch, outside the mask
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 1
    mask[15:25, 12:35] = 0
    x, y = innermost_point(mask)
    assert mask[y, x] == 1 and 8 <= x <= 11  # in the C's spine, 4 pixels or more from every edge
    ys, xs = np.nonzero(mask)
    assert mask[int(round(ys.mean())), int(round(xs.mean()))] == 0
    # a square: its centre; the image border counts as edge
    square = np.zeros((21, 31), np.uint8)
    square[0:21, 0:21] = 1
    assert innermost_point(square) == (10, 10)
    assert innermost_point(np.zeros((6, 8), np.uint8)) == (4, 3)


def test_points_scale_into_sams_resized_frame():
    masks = torch.zeros(2, 60, 80)
    masks[0, 10:21, 20:31] = 1  # centre (25, 15)
    masks[1, 40:51, 60:71] = 1  # centre (65, 45)
    points = innermost_points_in_sam_frame(masks, (48, 64), (60, 80))
    torch.testing.assert_close(points, torch.tensor([[25 * 0.8, 15 * 0.8], [65 * 0.8, 45 * 0.8]]))


def test_point_embedding_is_the_token_sam_decodes_for_a_point(tiny):
    model, _ = tiny
    points = torch.tensor([[10.0, 20.0], [40.0, 5.0]])
    embeddings = positive_point_embeddings(model.sam, points)
    sparse, _ = model.sam.prompt_encoder(input_points=points[None, :, None], input_labels=torch.ones(1, 2, 1, dtype=torch.long),
                                         input_boxes=None, input_masks=None)
    assert embeddings.shape == (2, model.config.seg_embedding_dim)
    torch.testing.assert_close(embeddings, sparse[0, :, 0])
    assert not torch.allclose(embeddings[0], embeddings[1])


def _batch(processor):
    image = np.full((40, 56, 3), 180, np.uint8)
    masks = np.zeros((2, 40, 56), np.uint8)
    masks[0, 4:14, 6:16] = 1
    masks[1, 20:36, 30:50] = 1
    sample = TrainingSample(Image.fromarray(image), [[("Segment both squares.", "They are [SEG] and [SEG].")]], masks)
    return ReasonSegCollator(processor)([sample]), masks


def test_loss_adds_the_weighted_distance_to_the_point_tokens(tiny):
    model, processor = tiny
    batch, masks = _batch(processor)
    model.train()
    torch.manual_seed(0)
    plain = model(**batch)
    assert plain.seg_point_loss is None
    model.config.seg_point_loss_weight = 2.0
    torch.manual_seed(0)
    out = model(**batch)
    resized = tuple(batch["resized_sizes"][0])
    scale = resized[0] / 40
    expected_points = torch.tensor([[10 * scale, 8 * scale], [39 * scale, 27 * scale]])  # innermost pixels, (x, y)
    targets = positive_point_embeddings(model.sam, expected_points)
    expected = 2.0 * F.mse_loss(out.seg_embeddings, targets)
    # pixel ties in the distance transform may pick a neighbour: the loss must match within that
    assert float(out.seg_point_loss.detach()) == pytest.approx(float(expected.detach()), rel=0.05)
    assert float(out.loss) == pytest.approx(float(plain.loss) + float(out.seg_point_loss), rel=1e-5)
    model.zero_grad()
    out.seg_point_loss.backward()
    assert next(model.seg_projection.parameters()).grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.sam.prompt_encoder.parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.sam.mask_decoder.parameters())


def test_training_config_sets_the_weight_and_sa2va_refuses_it(tiny):
    from reasonseg.modeling.sa2va.tiny import build_tiny_sa2va

    model, processor = tiny
    config = load_training_config(None, ["model=unused", "datasets=[{kind: custom, path: unused}]",
                                         "seg_point_loss_weight=0.5"])
    base = prepare_for_training(model, config, [processor.seg_token_id]).get_base_model()
    assert base.config.seg_point_loss_weight == 0.5
    sa2va, sa2va_processor = build_tiny_sa2va(seed=0)
    with pytest.raises(InputError, match="SAM-based .* only"):
        prepare_for_training(sa2va, config, [sa2va_processor.seg_token_id])


def test_weight_zero_turns_off_the_loss_a_model_was_saved_with(tiny):
    # a model exported from a run with the loss on keeps its weight in config.json; a run with 0 must turn it off
    model, processor = tiny
    model.config.seg_point_loss_weight = 1.0
    config = load_training_config(None, ["model=unused", "datasets=[{kind: custom, path: unused}]"])
    assert config.seg_point_loss_weight == 0
    base = prepare_for_training(model, config, [processor.seg_token_id]).get_base_model()
    batch, _ = _batch(processor)
    base.train()
    out = base(**batch)
    assert base.config.seg_point_loss_weight == 0 and out.seg_point_loss is None


def test_a_few_steps_on_the_point_loss_alone_lower_it(tiny):
    model, processor = tiny
    batch, _ = _batch(processor)
    model.config.seg_point_loss_weight = 1.0
    model.train()
    optimizer = torch.optim.Adam(model.seg_projection.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = model(**batch)
        optimizer.zero_grad()
        out.seg_point_loss.backward()
        optimizer.step()
        losses.append(float(out.seg_point_loss))
    assert losses[-1] < 0.4 * losses[0], losses  # measured 0.65 -> 0.20
