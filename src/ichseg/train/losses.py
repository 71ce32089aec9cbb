"""The paper's loss: binary cross-entropy plus Dice, from MONAI."""

from __future__ import annotations

from monai.losses import DiceCELoss
from torch import nn


def bce_dice_loss() -> nn.Module:
    """BCE + soft Dice on logits (N, 1, H, W).

    ``batch=True`` pools the Dice over the whole batch, so a batch of normal slices (empty
    masks) does not produce the degenerate per-slice Dice of 0/0.
    """
    return DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
