"""Training losses, as LISA defines them.

* CE: token-mean cross-entropy over all supervised positions of the batch (labels shifted by one).
* BCE: per mask, the pixel mean of BCE-with-logits at the original resolution.
* Dice: per mask, ``1 - (2 * sum(s * t) + eps) / (sum(s) + sum(t / 1000) + eps)`` with ``s = sigmoid(x) / 1000``
  and ``t`` the 0/1 target (LISA's scaled form, eps 1e-6: the target is scaled only in the denominator).
Both mask terms are summed over masks and divided by ``num_masks + 1e-8``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SCALE = 1000.0
DICE_EPS = 1e-6


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """logits ``[B, T, V]``, labels ``[B, T]`` aligned with logits' positions (shifted here)."""
    shifted_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=ignore_index)


def mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[n, H, W]`` logits and 0/1 targets -> per-mask pixel-mean BCE ``[n]``."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return loss.flatten(1).mean(dim=1)


def mask_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[n, H, W]`` logits and 0/1 targets -> per-mask Dice loss ``[n]``."""
    probs = logits.float().sigmoid().flatten(1) / DICE_SCALE
    targets = targets.float().flatten(1)
    numerator = 2 * (probs * targets).sum(dim=1)
    denominator = probs.sum(dim=1) + (targets / DICE_SCALE).sum(dim=1)
    return 1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)


def mask_losses(pred_logits: list[torch.Tensor], gt_masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean BCE and mean Dice over every mask of the batch (lists per image of ``[n_i, H_i, W_i]``)."""
    bce_sum, dice_sum, count = 0.0, 0.0, 0
    for pred, gt in zip(pred_logits, gt_masks):
        if pred.shape[0] == 0:
            continue
        if pred.shape != gt.shape:
            raise ValueError(f"predicted masks {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ")
        bce_sum = bce_sum + mask_bce(pred, gt).sum()
        dice_sum = dice_sum + mask_dice(pred, gt).sum()
        count += pred.shape[0]
    reference = pred_logits[0] if pred_logits else torch.zeros(())
    bce = torch.as_tensor(bce_sum, dtype=torch.float32, device=reference.device) / (count + 1e-8)
    dice = torch.as_tensor(dice_sum, dtype=torch.float32, device=reference.device) / (count + 1e-8)
    return bce, dice
