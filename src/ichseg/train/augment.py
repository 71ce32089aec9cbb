"""Training-time augmentation with MONAI transforms, seeded per (seed, epoch, step) so a
resumed run sees exactly the batches an uninterrupted one would have seen."""

from __future__ import annotations

import numpy as np
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    ScaleIntensityRanged,
)

from ichseg.config import TrainConfig
from ichseg.train.scanner_aug import RandScannerd


def build_augmenter(config: TrainConfig, windows: tuple[str, ...] = ()) -> Compose | None:
    """Random affine (rotation ±10°, scale ±10 %, shift ±5 %) and intensity jitter
    (contrast ±10 %, brightness ±0.05, Gaussian noise σ 0.02), as enabled in ``config``.

    ``strong_intensity`` replaces the jitter by nnU-Net's kind of intensity and resolution
    augmentation, so that another scanner's brightness, contrast, noise and sharpness are
    not new to the network: brightness ±0.1 (±25 grey levels), contrast ×0.75–1.25 about
    the mean, gamma 0.7–1.5, Gaussian noise σ ≤ 0.03, Gaussian blur σ 0.5–1.0 px, and
    simulated low resolution (down to half, then back up), each with its own probability,
    the result clipped to [0, 1] as an 8-bit window would be. ``scanner`` adds the scanner
    look (:mod:`ichseg.train.scanner_aug`: JPEG, sharp kernels, thin-slice noise)."""
    transforms = []
    if config.affine:
        transforms.append(
            RandAffined(
                keys=("image", "mask"),
                prob=0.8,
                rotate_range=np.deg2rad(10),
                scale_range=0.1,
                translate_range=0.05,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if config.skull_rim and not config.scanner:
        raise ValueError("skull_rim is part of the scanner augmentation (set scanner too)")
    if config.scanner and not config.strong_intensity:
        raise ValueError("scanner augmentation comes with strong_intensity (set both)")
    if config.strong_intensity:
        transforms += [
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
            RandScaleIntensityFixedMeand(keys="image", factors=0.25, prob=0.3),
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
            RandGaussianNoised(keys="image", std=0.03, prob=0.2),
            RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.2),
            RandSimulateLowResolutiond(keys="image", zoom_range=(0.5, 1.0), upsample_mode="bilinear", prob=0.2),
            *([RandScannerd(keys="image", prob_rim=config.skull_rim, windows=windows)] if config.scanner else []),
            ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    elif config.intensity:
        transforms += [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            RandGaussianNoised(keys="image", std=0.02, prob=0.3),
        ]
    return Compose(transforms) if transforms else None


def augment_batch(aug: Compose, images: np.ndarray, masks: np.ndarray, seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``aug`` to float images (B, C, S, S) in [0, 1] and bool masks (B, S, S).

    Returns float32 images and bool masks; the transform's generator is reseeded from
    ``seed`` (e.g. [run seed, epoch, step]) on every call.
    """
    aug.set_random_state(seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
    out_i = np.empty(images.shape, np.float32)
    out_m = np.empty(masks.shape, bool)
    for k in range(len(images)):
        d = aug({"image": images[k].astype(np.float32), "mask": masks[k][None].astype(np.float32)})
        out_i[k] = np.asarray(d["image"], np.float32)
        out_m[k] = np.asarray(d["mask"])[0] > 0.5
    return out_i, out_m


def crop_batch(images: np.ndarray, masks: np.ndarray, size_px: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random ``size_px`` square crops of uint8 images (B, C, S, S) and masks (B, S, S).

    A slice with blood is cropped around a random blood pixel (shifted by up to a quarter
    of the crop, so the lesion is not always central); a normal slice around a random
    pixel inside the head (channel 0 above 10 % grey), so crops of air are rare and the
    hard negatives near the skull are seen.
    """
    b, c, s, _ = images.shape
    if size_px >= s:
        return images, masks
    out_i = np.empty((b, c, size_px, size_px), images.dtype)
    out_m = np.empty((b, size_px, size_px), masks.dtype)
    half = size_px // 2
    for k in range(b):
        ys, xs = np.nonzero(masks[k])
        if not len(ys):
            ys, xs = np.nonzero(images[k, 0] > 25)
        if len(ys):
            j = rng.integers(len(ys))
            cy, cx = ys[j] + rng.integers(-half // 2, half // 2 + 1), xs[j] + rng.integers(-half // 2, half // 2 + 1)
        else:
            cy, cx = rng.integers(half, s - half + 1, size=2)
        y0 = int(np.clip(cy - half, 0, s - size_px))
        x0 = int(np.clip(cx - half, 0, s - size_px))
        out_i[k] = images[k, :, y0 : y0 + size_px, x0 : x0 + size_px]
        out_m[k] = masks[k, y0 : y0 + size_px, x0 : x0 + size_px]
    return out_i, out_m
