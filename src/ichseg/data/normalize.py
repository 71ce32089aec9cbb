"""Per-study intensity normalisation and the intracranial mask, both from the images alone.

Why: a scanner whose calibration reads tissue a few HU brighter shifts every grey level of
the brain window, and normal parenchyma then sits close to blood (on one withheld patient
the old model painted 211,000 px of normal tissue). Shifting each study so that the median
of its own intracranial parenchyma lands on the training data's median removes such an
offset before the network sees it. The intracranial mask (from the bone window, where the
skull is unmistakable) also lets post-processing drop anything called blood outside the
skull.

Grey levels are those of CT-ICH's 8-bit JPG windows: in the bone window soft tissue and
blood sit near 75, the skull above 120, air at 0; in the brain window parenchyma sits near
118, CSF below 60 and fresh blood around 170-230.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

SOFT_TISSUE_BONE_WINDOW = (30, 120)  # bone-window grey levels of soft tissue and blood (skull above)
PARENCHYMA_BRAIN_WINDOW = (60, 190)  # brain-window grey levels counted as parenchyma (not CSF, blood, bone)
MIN_PARENCHYMA_PX_FRACTION = 0.002  # of a study's pixels; fewer and no shift is made


def intracranial_mask(bone_u8: np.ndarray, open_fraction: float = 0.02) -> np.ndarray:
    """The inside of the skull on one bone-window slice (H, W) uint8, as a bool mask.

    Soft tissue (bone-window grey in ``SOFT_TISSUE_BONE_WINDOW``) is opened with a disc
    of radius ``open_fraction`` × the image size, which cuts the thin scalp ring off the
    brain where the skull is open (skull base, fractures); the largest piece is the brain,
    grown back by the same radius within soft tissue and kept only where the growth stays
    connected to it, its holes filled. Why connected: a disc of that radius (about 5 mm
    on CT-ICH's frame) reaches across a skull thinner than itself, and the temporal
    squama is 2-4 mm thick, so the growth alone also took a sliver of temporalis muscle
    outside the bone, where a real scanner head's muscle (60-90 HU) was then outlined as
    blood (docs/RESULTS.md, issue 14). A blank slice
    (no bone window: all zeros) gives an all-True mask, so a missing window never deletes
    a finding; a slice with no soft tissue (above the head) gives an all-False mask.
    """
    bone = np.asarray(bone_u8)
    if bone.ndim != 2:
        raise ValueError(f"intracranial_mask expects one (H, W) slice, got shape {bone.shape}")
    if not bone.any():
        return np.ones(bone.shape, bool)
    lo, hi = SOFT_TISSUE_BONE_WINDOW
    soft = ((bone >= lo) & (bone < hi)).astype(np.uint8)
    r = max(1, round(open_fraction * max(bone.shape)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    opened = cv2.morphologyEx(soft, cv2.MORPH_OPEN, disc)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=4)
    if n <= 1:
        return np.zeros(bone.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    brain = (labels == biggest).astype(np.uint8)
    grown = cv2.dilate(brain, disc) & soft
    _, pieces = cv2.connectedComponents(grown, connectivity=4)
    brain = (pieces == pieces[brain > 0][0]).astype(np.uint8)  # the brain is one 4-connected piece
    contours, _ = cv2.findContours(brain, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(brain)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def parenchyma_level(brain_u8: np.ndarray, bone_u8: np.ndarray | None = None) -> float | None:
    """Median brain-window grey level of a study's intracranial parenchyma.

    ``brain_u8`` (and ``bone_u8``) are (N, H, W) stacks of one study; pixels inside the
    intracranial mask (the whole image without a bone window) whose brain-window grey is in
    ``PARENCHYMA_BRAIN_WINDOW`` are pooled over all slices. None when too few such pixels
    exist (e.g. one slice above the head): the caller then leaves the study as it is.
    """
    brain = np.asarray(brain_u8)
    if brain.ndim == 2:
        brain = brain[None]
    pixels = []
    for k in range(len(brain)):
        inside = intracranial_mask(bone_u8[k]) if bone_u8 is not None else np.ones(brain[k].shape, bool)
        v = brain[k][inside]
        pixels.append(v[(v >= PARENCHYMA_BRAIN_WINDOW[0]) & (v <= PARENCHYMA_BRAIN_WINDOW[1])])
    pooled = np.concatenate(pixels) if pixels else np.zeros(0, np.uint8)
    if len(pooled) < MIN_PARENCHYMA_PX_FRACTION * brain.size:
        return None
    return float(np.median(pooled))


def shift_u8(images: np.ndarray, offset: float) -> np.ndarray:
    """``images - offset`` rounded and clipped to uint8 (a pure brightness shift)."""
    return np.clip(np.rint(images.astype(np.float32) - offset), 0, 255).astype(np.uint8)


def center_channels(windows: Sequence[str], context_slices: int) -> dict[str, int]:
    """Channel index of each window of the slice itself in a 2.5D input laid out as
    [slice−k windows…, …, slice+k windows…] (:func:`ichseg.data.context.with_context`)."""
    return {w: context_slices * len(windows) + i for i, w in enumerate(windows)}


def normalize_studies(
    images: np.ndarray,
    windows: Sequence[str],
    context_slices: int,
    study_ids: Sequence[Hashable],
    reference: float,
) -> tuple[np.ndarray, dict[Hashable, float]]:
    """Shift every brain-window channel of each study so its parenchyma median is ``reference``.

    ``images`` is a uint8 network input (N, C, S, S) (2.5D layout as in
    :func:`center_channels`), ``study_ids`` (N,) says which study each row belongs to. The
    level is measured on the rows' own slices (centre channels). Returns the shifted copy
    and each study's applied offset in grey levels (0 where no level could be measured or
    the input has no brain window).
    """
    if "brain" not in windows:
        return images, {}
    if len(study_ids) != len(images):
        raise ValueError(f"{len(study_ids)} study ids for {len(images)} images")
    centre = center_channels(windows, context_slices)
    brain_channels = [j * len(windows) + windows.index("brain") for j in range(2 * context_slices + 1)]
    ids = np.asarray([str(s) for s in study_ids])
    out = images.copy()
    offsets: dict[Hashable, float] = {}
    for sid in dict.fromkeys(study_ids):
        rows = np.flatnonzero(ids == str(sid))
        bone = images[rows, centre["bone"]] if "bone" in centre else None
        level = parenchyma_level(images[rows, centre["brain"]], bone)
        offset = 0.0 if level is None else level - reference
        offsets[sid] = offset
        if offset:
            for c in brain_channels:
                out[rows, c] = shift_u8(images[rows, c], offset)
    return out, offsets


def intracranial_masks(images: np.ndarray, windows: Sequence[str], context_slices: int) -> np.ndarray:
    """Per row of a network input (N, C, S, S), the intracranial mask (N, S, S) of the slice
    itself from its bone-window channel; all True when the input has no bone window."""
    if "bone" not in windows:
        return np.ones((len(images), *images.shape[2:]), bool)
    c = center_channels(windows, context_slices)["bone"]
    return np.stack([intracranial_mask(x) for x in images[:, c]]) if len(images) else np.zeros((0, *images.shape[2:]), bool)


def normalize_for(config, images: np.ndarray, study_ids: Sequence[Hashable]) -> np.ndarray:
    """A network's uint8 input as its config asks: studies shifted to the reference level
    when ``config.normalize`` is "parenchyma", else unchanged. Every path into a network
    (training, evaluation, prediction) goes through here, so they cannot disagree."""
    if getattr(config, "normalize", "none") != "parenchyma":
        return images
    out, offsets = normalize_studies(images, config.windows, config.context_slices, study_ids, config.normalize_reference)
    log.debug("parenchyma offsets: %s", offsets)
    return out
