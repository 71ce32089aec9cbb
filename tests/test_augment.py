"""Augmentation: image and mask move together, and the same seed gives the same batch."""

from __future__ import annotations

import numpy as np
import pytest

from ichseg.config import TrainConfig
from ichseg.train.augment import augment_batch, build_augmenter


def _batch() -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((3, 2, 64, 64), np.float32)
    masks = np.zeros((3, 64, 64), bool)
    masks[:, 20:40, 25:35] = True
    images[:, 0][masks] = 0.9
    return images, masks


def test_affine_moves_mask_with_image_and_is_seeded() -> None:
    aug = build_augmenter(TrainConfig(affine=True))
    images, masks = _batch()
    a_i, a_m = augment_batch(aug, images, masks, [0, 1, 2])
    b_i, b_m = augment_batch(aug, images, masks, [0, 1, 2])
    assert np.array_equal(a_i, b_i) and np.array_equal(a_m, b_m)
    c_i, _ = augment_batch(aug, images, masks, [0, 1, 3])
    assert not np.array_equal(a_i, c_i)
    for k in range(3):
        bright = a_i[k, 0] > 0.45
        overlap = (bright & a_m[k]).sum() / max(a_m[k].sum(), 1)
        assert overlap > 0.85  # the lesion and its mask stay aligned
    assert a_m.dtype == bool and a_i.dtype == np.float32


def test_no_augmentation_configured() -> None:
    assert build_augmenter(TrainConfig()) is None
    aug = build_augmenter(TrainConfig(intensity=True))
    images, masks = _batch()
    _, m = augment_batch(aug, images, masks, [1])
    assert np.array_equal(m, masks)  # intensity changes never touch the mask


def test_cosine_learning_rate_decays_from_the_base_to_zero() -> None:
    from ichseg.config import TrainConfig
    from ichseg.train.loop import learning_rate_at

    cfg = TrainConfig(learning_rate=1e-3, lr_schedule="cosine")
    assert learning_rate_at(cfg, 0, 100) == 1e-3
    assert abs(learning_rate_at(cfg, 50, 100) - 5e-4) < 1e-12
    assert learning_rate_at(cfg, 100, 100) < 1e-12
    assert learning_rate_at(TrainConfig(learning_rate=1e-3), 50, 100) == 1e-3


def test_crops_follow_the_blood_and_keep_shapes() -> None:
    from ichseg.train.augment import crop_batch

    images = np.zeros((2, 3, 64, 64), np.uint8)
    images[:, 0, 8:56, 8:56] = 100  # the "head"
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 50:54, 50:54] = True  # a bleed near one corner; slice 1 is normal
    rng = np.random.default_rng(0)
    for _ in range(20):
        ci, cm = crop_batch(images, masks, 32, rng)
        assert ci.shape == (2, 3, 32, 32) and cm.shape == (2, 32, 32)
        assert cm[0].sum() > 0  # the crop of a bleeding slice shows (part of) the bleed
        assert ci[1, 0].max() == 100  # the crop of a normal slice is inside the head


def test_training_device_is_resolved_or_refused() -> None:
    import pytest
    import torch

    from ichseg.cli import build_parser
    from ichseg.cli.options import run_config as _config
    from ichseg.train.loop import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():  # a CPU build must not silently train on the CPU when a GPU was asked for
        with pytest.raises(ValueError, match="sees no GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--preset", "fast", "--device", "auto"])
    cfg = _config(args, "cpu")
    assert cfg.train_unet.device == cfg.train_classifier.device == "auto"


def _lag1_correlation(field: np.ndarray) -> float:
    f = field - field.mean()
    return float((f[:, 1:] * f[:, :-1]).mean() / f.var())


def test_scanner_looks_do_what_their_names_say() -> None:
    from ichseg.data.scanner import correlated_noise_float, jpeg_float, sharpen_float

    rng = np.random.default_rng(0)
    flat = np.full((1, 64, 64), 0.5, np.float32)
    grain = correlated_noise_float(flat, 0.04, 1.2, rng)[0] - 0.5
    assert abs(grain.std() - 0.04) < 0.005
    assert _lag1_correlation(grain) > 0.5  # thin-slice grain is correlated, unlike white noise
    assert abs(_lag1_correlation(rng.standard_normal((64, 64)))) < 0.1
    edge = np.zeros((1, 64, 64), np.float32)
    edge[:, :, 32:] = 0.6
    sharp = sharpen_float(edge, 1.0)
    assert sharp[0, 10, 33] > 0.6 and sharp[0, 10, 30] == 0.0  # overshoot on the bright side, clipped below
    assert np.array_equal(sharp[0, :, :20], edge[0, :, :20])  # flat regions untouched
    blocks = jpeg_float(np.random.default_rng(1).random((2, 64, 64)).astype(np.float32), 20)
    assert blocks.shape == (2, 64, 64) and 0.05 < np.abs(blocks - 0.5).mean() < 0.3  # lossy, same range


def test_scanner_augmentation_is_seeded_and_leaves_the_mask() -> None:
    aug = build_augmenter(TrainConfig(intensity=True, strong_intensity=True, scanner=True))
    images, masks = _batch()
    a_i, a_m = augment_batch(aug, images, masks, [5, 0, 1])
    b_i, _ = augment_batch(aug, images, masks, [5, 0, 1])
    assert np.array_equal(a_i, b_i) and np.array_equal(a_m, masks)
    assert 0.0 <= a_i.min() and a_i.max() <= 1.0
    with pytest.raises(ValueError, match="strong_intensity"):
        build_augmenter(TrainConfig(scanner=True))


def _head_channels() -> np.ndarray:
    """(6, 128, 128): bone and brain windows of three identical slices, a skull ring of
    radius 50-55 px around soft tissue."""
    import cv2

    img = np.zeros((6, 128, 128), np.float32)
    for ch in (0, 2, 4):  # bone window: skull bright, soft tissue at 0.3
        cv2.circle(img[ch], (64, 64), 55, 0.8, -1)
        cv2.circle(img[ch], (64, 64), 50, 0.3, -1)
    for ch in (1, 3, 5):  # brain window: brain at 0.45
        cv2.circle(img[ch], (64, 64), 50, 0.45, -1)
    return img


def test_skull_rim_brightens_brain_next_to_the_inner_table_only() -> None:
    from ichseg.data.scanner import skull_rim_float

    img = _head_channels()
    out = skull_rim_float(img, [1, 3, 5], 2, excess=0.2, width_px=3.0)
    assert np.array_equal(out[[0, 2, 4]], img[[0, 2, 4]])  # the bone windows are untouched
    gain = out[3] - img[3]
    assert gain[64, 14] == pytest.approx(0.2 * np.exp(-1 / 3), abs=0.01)  # 1 px inside the inner table
    assert gain[64, 24] < 0.1 * gain[64, 14] and gain[64, 64] == pytest.approx(0.0, abs=1e-6)  # 11 px in, centre
    assert (gain >= 0).all() and not np.array_equal(out, img)
    assert skull_rim_float(np.zeros_like(img), [1, 3, 5], 2, 0.2, 3.0).max() == 0.0  # no skull: unchanged


def test_the_rim_needs_both_windows_and_the_scanner_augmentation() -> None:
    from ichseg.config import TrainConfig
    from ichseg.train.augment import build_augmenter
    from ichseg.train.scanner_aug import RandScannerd

    with pytest.raises(ValueError, match="brain and bone windows"):
        RandScannerd(prob_rim=0.3, windows=("brain",))
    with pytest.raises(ValueError, match="set scanner too"):
        build_augmenter(TrainConfig(skull_rim=0.3, strong_intensity=True), ("bone", "brain"))
    t = RandScannerd(prob_jpeg=0, prob_sharp=0, prob_noise=0, prob_rim=1.0, windows=("bone", "brain"))
    t.set_random_state(0)
    img = _head_channels()
    out = t({"image": img, "mask": np.ones((1, 128, 128), np.float32)})
    assert (out["image"][[1, 3, 5]] > img[[1, 3, 5]]).any() and out["mask"].all()
