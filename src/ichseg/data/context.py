"""2.5D context: neighbouring slices as extra input channels.

A 5 mm slice alone can make a partial-volume bright spot look like blood; its neighbours
tell a radiologist (and a network) whether it continues through the volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def with_context(images: np.ndarray, keys: Sequence[tuple[str, int]], context_slices: int) -> np.ndarray:
    """Stack each slice with its ``context_slices`` neighbours on either side.

    ``images`` is (N, C, S, S) and ``keys`` gives each row's (patient_id, slice number).
    The result is (N, C·(2k+1), S, S), ordered [slice−k windows…, …, slice+k windows…]. A
    neighbour that does not exist (the ends of a scan, or a slice left out) is replaced
    by the nearest existing slice towards the centre, as edge padding.
    """
    if context_slices == 0:
        return images
    if len(keys) != len(images):
        raise ValueError(f"{len(keys)} keys for {len(images)} images")
    where = {key: i for i, key in enumerate(keys)}
    n, c, h, w = images.shape
    k = context_slices
    out = np.empty((n, c * (2 * k + 1), h, w), images.dtype)
    for i, (pid, s) in enumerate(keys):
        for j, d in enumerate(range(-k, k + 1)):
            src = i
            step = 1 if d > 0 else -1
            for dd in range(step, d + step, step) if d else ():
                nxt = where.get((pid, s + dd))
                if nxt is None:
                    break
                src = nxt
            out[i, j * c : (j + 1) * c] = images[src]
    return out
