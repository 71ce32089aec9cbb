"""The mask and slice-head losses: the paper's binary cross-entropy plus Dice, from MONAI,
with optional per-pixel weights on small and thin bleeds (ichseg.train.lesion_weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from ichseg.config import TrainConfig
from ichseg.train.lesion_weights import lesion_weights_batch

# the reference sizes live in TrainConfig, the one typed place for them
AREA_REF_PX, THICKNESS_REF_PX = TrainConfig.lesion_area_px, TrainConfig.lesion_thickness_px


def bce_dice_loss() -> nn.Module:
    """BCE + soft Dice on logits (N, 1, H, W).

    ``batch=True`` pools the Dice over the whole batch, so a batch of normal slices (empty
    masks) does not produce the degenerate per-slice Dice of 0/0.
    """
    return DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


class LesionWeightedDiceBCE(nn.Module):
    """Batch soft Dice + cross-entropy whose per-pixel weights lift small and thin blood
    components (up to ``max_weight``); with every weight 1 it equals :func:`bce_dice_loss`.

    The weights come from the target masks themselves, so every caller (training step,
    validation, benchmarks) gets the same loss without carrying weight maps around."""

    def __init__(self, max_weight: float, area_ref_px: float = AREA_REF_PX, thickness_ref_px: float = THICKNESS_REF_PX) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.max_weight = max_weight
        self.area_ref_px = area_ref_px
        self.thickness_ref_px = thickness_ref_px

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        masks = target.detach().to("cpu").numpy() > 0.5
        w = lesion_weights_batch(masks, self.area_ref_px, self.thickness_ref_px, self.max_weight)
        weight = torch.from_numpy(w).to(device=logits.device, dtype=logits.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        return self.dice(logits, target) + ce


class SegmentationLoss(nn.Module):
    """Dice + cross-entropy on the mask, plus ``head_weight`` × BCE on the slice heads when
    the U-Net has them (targets then come as (mask, heads)). ``lesion_max_weight`` > 1 turns
    on the small/thin-bleed weighting of the mask's cross-entropy."""

    def __init__(
        self,
        head_weight: float = 0.5,
        lesion_max_weight: float = 0.0,
        lesion_area_px: float = AREA_REF_PX,
        lesion_thickness_px: float = THICKNESS_REF_PX,
    ) -> None:
        super().__init__()
        self.mask_loss = (
            LesionWeightedDiceBCE(lesion_max_weight, lesion_area_px, lesion_thickness_px)
            if lesion_max_weight > 1
            else bce_dice_loss()
        )
        self.head_loss = nn.BCEWithLogitsLoss()
        self.head_weight = head_weight

    def forward(self, out, target) -> torch.Tensor:
        if isinstance(out, tuple):
            return self.mask_loss(out[0], target[0]) + self.head_weight * self.head_loss(out[1], target[1])
        return self.mask_loss(out, target)
