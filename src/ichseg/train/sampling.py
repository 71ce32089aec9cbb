"""Which slices each epoch sees: positives are rare (about 1 slice in 8), so they are
oversampled to a fixed share of every epoch."""

from __future__ import annotations

import numpy as np


def epoch_indices(labels: np.ndarray, n_samples: int, positive_fraction: float, seed: int, epoch: int) -> np.ndarray:
    """Indices into the training set for one epoch, shuffled.

    A pure function of (labels, sizes, seed, epoch), so a run resumed mid-epoch sees the
    same order it would have seen uninterrupted. Positives are drawn with replacement
    (there are few); negatives without replacement while there are enough.
    """
    labels = np.asarray(labels).astype(bool)
    pos = np.flatnonzero(labels)
    neg = np.flatnonzero(~labels)
    rng = np.random.default_rng([seed, epoch])
    n_pos = round(n_samples * positive_fraction) if len(pos) else 0
    n_neg = n_samples - n_pos if len(neg) else 0
    if not len(neg):
        n_pos = n_samples
    parts = []
    if n_pos:
        parts.append(rng.choice(pos, size=n_pos, replace=n_pos > len(pos)))
    if n_neg:
        parts.append(rng.choice(neg, size=n_neg, replace=n_neg > len(neg)))
    idx = np.concatenate(parts) if parts else np.zeros(0, int)
    rng.shuffle(idx)
    return idx
