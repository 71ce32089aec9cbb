"""The small/thin-bleed loss weights: which pixels are lifted, by how much, and that the
weighted loss falls back to the paper's BCE + Dice when every weight is 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichseg.config import preset
from ichseg.train.lesion_weights import component_weights_px, lesion_weights_batch
from ichseg.train.losses import LesionWeightedDiceBCE, SegmentationLoss, bce_dice_loss


def test_background_and_large_blobs_weigh_one() -> None:
    m = np.zeros((64, 64), bool)
    m[10:40, 10:40] = True  # 900 px, 30 px thick
    w = component_weights_px(m, area_ref_px=400, thickness_ref_px=8, max_weight=6)
    assert w.dtype == np.float32
    assert np.all(w == 1.0)
    assert np.all(component_weights_px(np.zeros((8, 8), bool), 400, 8, 6) == 1.0)


def test_small_speck_gets_area_weight_clipped() -> None:
    m = np.zeros((64, 64), bool)
    m[5:9, 5:9] = True  # 16 px: sqrt(400/16) = 5, thickness ~3 px -> 8/3; the larger is 5
    m[40:42, 40:41] = True  # 2 px: sqrt(200) = 14 -> clipped to 6
    w = component_weights_px(m, 400, 8, 6)
    assert w[6, 6] == pytest.approx(5.0, rel=1e-5)
    assert w[40, 40] == pytest.approx(6.0)
    assert w[30, 30] == 1.0  # background untouched


def test_thin_crescent_gets_thickness_weight() -> None:
    m = np.zeros((128, 128), bool)
    m[20:23, 4:124] = True  # 360 px long band, 3 px wide: area weight ~1.05, thin weight 8/3
    w = component_weights_px(m, 400, 8, 6)
    assert w[21, 60] == pytest.approx(8 / 3, rel=0.05)
    assert np.unique(w[m]).size == 1  # one weight per component


def test_batch_shapes_and_bad_max() -> None:
    masks = np.zeros((3, 1, 16, 16), bool)
    masks[1, 0, 2:4, 2:4] = True
    w = lesion_weights_batch(masks, 400, 8, 6)
    assert w.shape == masks.shape and w[1, 0, 2, 2] == 6.0 and w[0].max() == 1.0
    with pytest.raises(ValueError, match="max_weight"):
        component_weights_px(masks[1, 0], 400, 8, 0.5)


def test_weighted_loss_equals_plain_when_weights_are_one_and_lifts_small() -> None:
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 32, 32)
    target[0, 0, 4:28, 4:28] = 1  # large: weight 1
    logits = torch.randn(2, 1, 32, 32)
    plain = bce_dice_loss()(logits, target)
    weighted = LesionWeightedDiceBCE(max_weight=6, area_ref_px=100, thickness_ref_px=2)(logits, target)
    assert weighted.item() == pytest.approx(plain.item(), rel=1e-5)
    small = torch.zeros(2, 1, 32, 32)
    small[1, 0, 10:12, 10:12] = 1
    lifted = LesionWeightedDiceBCE(max_weight=6)(logits, small)
    assert lifted.item() > bce_dice_loss()(logits, small).item()


def test_segmentation_loss_switch_and_preset() -> None:
    assert not isinstance(SegmentationLoss().mask_loss, LesionWeightedDiceBCE)
    assert isinstance(SegmentationLoss(lesion_max_weight=6).mask_loss, LesionWeightedDiceBCE)
    t = preset("robust-384-small").train_unet
    assert t.lesion_max_weight == 6.0 and t.crop_px == 256
    assert preset("robust-384").train_unet.lesion_max_weight == 0.0
