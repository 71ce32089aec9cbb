"""One study in, its masks and slice verdicts out: the single-network path (a U-Net, or a
fold ensemble of them, whose slice heads replace the classifier).

Every slice goes through the U-Net: nothing is skipped on a weak classifier's word. The
input is each slice's windows at the network size with its neighbours (2.5D), shifted per
study to the training data's parenchyma level when the model asks for it; the probability
maps come back at each slice's own size and become masks by
:func:`ichseg.infer.pipeline.masks_from_probs` (intracranial mask, blob-wise speck removal),
and slice verdicts by :func:`ichseg.infer.postprocess.fuse_verdict`. File formats (JPG
folders, DICOM series, NIfTI volumes) are the callers' business: they hand in 8-bit
windows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ichseg.data.cache import resize_image_u8
from ichseg.data.context import with_context
from ichseg.data.normalize import intracranial_masks, normalize_studies
from ichseg.infer.pipeline import Bundle, classify, masks_from_probs, segment_bundle, segment_with_heads
from ichseg.infer.postprocess import fuse_verdict, resize_mask_nearest, review_flags

log = logging.getLogger(__name__)


@dataclass
class StudyPrediction:
    """What the model says about one study, slice by slice (slice order as given)."""

    masks: list[np.ndarray]  # per slice, bool (H, W) at that slice's own size
    verdict: np.ndarray  # (N,) bool: blood on this slice
    heads: dict[str, np.ndarray]  # per head name (hemorrhage first), (N,) probability
    max_probability: np.ndarray  # (N,) highest blood probability inside the head
    intensity_offset: float = 0.0  # grey levels the brain window was shifted by (normalisation)
    # (N,) slices the whole ensemble ran on (all of them unless a screening member ran first)
    segmented: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # (N,) slices the slice head flags with nothing outlined (verdict_rule "outlined"):
    # for a reader to look at, never a positive verdict
    review: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def slice_probability(self) -> np.ndarray:
        """(N,) hemorrhage probability of each slice (the hemorrhage head)."""
        return self.heads["hemorrhage"]

    @property
    def scan_probability(self) -> float:
        """The study's hemorrhage probability: its most likely slice's."""
        return float(self.slice_probability.max()) if len(self.verdict) else 0.0

    @property
    def hemorrhage(self) -> bool:
        """The study verdict: blood on any slice."""
        return bool(self.verdict.any())


def network_input_u8(
    brain: Sequence[np.ndarray], bone: Sequence[np.ndarray | None] | None, bundle: Bundle, cfg: Any = None
) -> tuple[np.ndarray, float]:
    """A network's uint8 input (N, C, S, S) for one study's slices (the U-Net's unless
    ``cfg`` names another), normalised as its config asks; returns it with the
    brain-window offset applied (grey levels)."""
    cfg = cfg or bundle.unet_config
    size, interp = cfg.input_size_px, bundle.preprocess.image_interpolation
    x = np.zeros((len(brain), len(cfg.windows), size, size), np.uint8)
    for i in range(len(brain)):
        for c, w in enumerate(cfg.windows):
            src = brain[i] if w == "brain" else (bone[i] if bone is not None else None)
            if src is not None:
                x[i, c] = resize_image_u8(src, size, interp)
    x = with_context(x, [("study", i) for i in range(len(brain))], cfg.context_slices)
    offset = 0.0
    if getattr(cfg, "normalize", "none") == "parenchyma":
        x, offsets = normalize_studies(x, cfg.windows, cfg.context_slices, ["study"] * len(x), cfg.normalize_reference)
        offset = offsets.get("study", 0.0)
    return x, offset


def predict_windows(
    bundle: Bundle, brain: Sequence[np.ndarray], bone: Sequence[np.ndarray | None] | None = None
) -> StudyPrediction:
    """Predict one study from its 8-bit brain-window slices (and bone-window twins, None
    where missing), in slice order. Each slice may have its own size; masks come back at
    that size. A two-stage bundle's classifier gates the U-Net (its probabilities are the
    slice heads, and only the slices it passes are segmented)."""
    if not len(brain):
        raise ValueError("no slices to predict")
    cfg, pipe = bundle.unet_config, bundle.pipeline
    x, offset = network_input_u8(brain, bone, bundle)
    size = cfg.input_size_px
    inside_small = intracranial_masks(x, cfg.windows, cfg.context_slices)
    if bundle.classifier is not None:  # the two-stage path: classifier first, U-Net on what it passes
        c_in, _ = network_input_u8(brain, bone, bundle, bundle.classifier_config)
        heads = classify(bundle.classifier, c_in)
        ensembled = heads[:, 0] >= pipe.classifier_threshold
        probs_small = np.zeros((len(x), size, size), np.float32)
        if ensembled.any():
            probs_small[ensembled] = segment_with_heads(bundle.unet, x[ensembled], size, tta_flip=pipe.tta_flip)[0]
    else:
        probs_small, heads, ensembled = segment_bundle(bundle, x, size)
    assert heads is not None  # single-network bundles always have heads (load_bundle checks)
    masks, maxp = [], np.zeros(len(brain), np.float32)
    for i, src in enumerate(brain):
        shape = src.shape[:2]
        p = probs_small[i] if shape == (size, size) else cv2.resize(probs_small[i], shape[::-1], interpolation=cv2.INTER_LINEAR)
        inside = resize_mask_nearest(inside_small[i], shape)
        area_scale = shape[0] * shape[1] / pipe.eval_size_px**2
        masks.append(masks_from_probs(p[None], pipe, area_scale, inside[None], head=heads[i : i + 1, 0])[0])
        maxp[i] = float((p * inside).max())
    head_probs = {h: heads[:, k] for k, h in enumerate(bundle.heads)}
    areas = np.array([m.sum() for m in masks])
    review = np.zeros(len(brain), bool)
    if bundle.classifier is not None:
        verdict = ensembled & (areas > 0)
    else:
        verdict = fuse_verdict(areas, head_probs["hemorrhage"], pipe.head_threshold, pipe.verdict_rule)
        review = review_flags(areas, head_probs["hemorrhage"], pipe.head_threshold, pipe.verdict_rule)
    return StudyPrediction(masks, verdict, head_probs, maxp, offset, ensembled, review)
