"""Thin series as the 5 mm slices the model knows.

The model was trained on CT-ICH's 5 mm slices. A 1-1.5 mm series is another image: each
slice has several times the quantum noise (noise falls with the square root of the
thickness) and less partial-volume blur, and on it the slice head of the shipped model
called a normal head bleeding on almost every slice (issue 14). A scanner makes its thick
reconstruction by averaging thin slices; so do we: consecutive thin slices are averaged in
HU into slabs about 5 mm thick, the model reads the slabs, and each thin slice takes back
its slab's mask and probabilities, so masks, SEG and volumes stay on the input's grid.

Slabs are cut by position along the slice normal, not by count, so a series whose spacing
varies still gets slabs of about 5 mm; a series already at least ``NATIVE_MIN_MM`` thick
is read slice by slice, as it is.
"""

from __future__ import annotations

import numpy as np

SLAB_MM = 5.0
NATIVE_MIN_MM = 3.5
"""A series whose median slice step is at least this is read as it is."""


def slab_index(positions_mm: np.ndarray, slab_mm: float = SLAB_MM, native_min_mm: float = NATIVE_MIN_MM) -> np.ndarray:
    """For each slice (positions along the normal, increasing), the slab it belongs to
    (0, 1, ...; consecutive). Slabs are ``slab_mm`` bins from the first slice's lower
    edge; a last slab less than half as thick joins the one before it."""
    z = np.asarray(positions_mm, np.float64)
    n = len(z)
    if n < 2:
        return np.arange(n)
    steps = np.diff(z)
    if float(np.median(steps)) >= native_min_mm:
        return np.arange(n)
    lower = z[0] - steps[0] / 2
    idx = np.floor((z - lower) / slab_mm).astype(int)
    last = idx[-1]
    upper = z[-1] + steps[-1] / 2
    if last > 0 and upper - (lower + last * slab_mm) < slab_mm / 2:
        idx[idx == last] = last - 1
    return np.unique(idx, return_inverse=True)[1]


def average_slabs(hu: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(S, H, W) float32: the mean HU of each slab's slices (a thick reconstruction)."""
    return np.stack([hu[index == s].mean(0) for s in range(int(index.max()) + 1)]).astype(np.float32)


def slab_thickness_mm(positions_mm: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(S,) each slab's extent along the normal (its slices' centres ± half a step)."""
    z = np.asarray(positions_mm, np.float64)
    step = float(np.median(np.diff(z))) if len(z) > 1 else SLAB_MM
    return np.array([z[index == s].max() - z[index == s].min() + step for s in range(int(index.max()) + 1)])
