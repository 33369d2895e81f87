"""Point prompts derived from masks: the pixel farthest inside a mask, and SAM's encoding of it.

The innermost point (the maximum of the distance transform) is the prompt SAM-style pre-training uses for an
object, and the target of the optional ``seg_point_loss``: it lies inside the object even when the object is concave
or partly hidden, where a centroid may not.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def innermost_point(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the mask pixel farthest from the mask's edge (the image border counts as edge); ``mask`` 2-D.

    An empty mask gives its centre."""
    mask = np.asarray(mask, dtype=np.uint8)
    if not mask.any():
        return mask.shape[1] // 2, mask.shape[0] // 2
    distance = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def innermost_points_in_sam_frame(
    masks: torch.Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """``[n, H, W]`` masks at the original size -> ``[n, 2]`` float (x, y) innermost points in SAM's resized frame."""
    scale_y, scale_x = resized_size[0] / original_size[0], resized_size[1] / original_size[1]
    points = [innermost_point((mask > 0).cpu().numpy()) for mask in masks]
    return torch.tensor([[x * scale_x, y * scale_y] for x, y in points], dtype=torch.float32).reshape(-1, 2)


def positive_point_embeddings(sam, points: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` points in SAM's resized frame -> ``[n, C]``: SAM's sparse prompt token for each as a positive
    point (the token a point-prompted SAM decodes; the padding token SAM appends is left out)."""
    encoder = sam.prompt_encoder
    device = encoder.shared_embedding.positional_embedding.device
    points = points.to(device)[None, :, None, :]
    labels = torch.ones(points.shape[:3], dtype=torch.long, device=device)
    sparse, _ = encoder(input_points=points, input_labels=labels, input_boxes=None, input_masks=None)
    return sparse[0, :, 0]
