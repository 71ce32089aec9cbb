"""2.5D neighbour stacking."""

from __future__ import annotations

import numpy as np

from ichseg.data.context import with_context


def test_neighbours_stacked_with_edge_padding() -> None:
    # patient a: slices 1, 2, 3; patient b: slices 1, 3 (2 missing); value = row index
    keys = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 3)]
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) * np.ones((1, 1, 2, 2), np.uint8)
    out = with_context(images, keys, 1)
    assert out.shape == (5, 3, 2, 2)
    got = out[:, :, 0, 0].tolist()
    assert got[0] == [0, 0, 1]  # first slice: below is itself
    assert got[1] == [0, 1, 2]
    assert got[2] == [1, 2, 2]
    assert got[3] == [3, 3, 3]  # b2 is missing, so b1 has no neighbour above
    assert got[4] == [4, 4, 4]
    assert with_context(images, keys, 0) is images


def test_two_neighbours_each_side_multichannel() -> None:
    keys = [("a", s) for s in range(1, 6)]
    images = np.stack([np.stack([np.full((1, 1), i, np.uint8), np.full((1, 1), 10 + i, np.uint8)]) for i in range(5)])
    out = with_context(images, keys, 2)
    assert out.shape == (5, 10, 1, 1)
    assert out[2, :, 0, 0].tolist() == [0, 10, 1, 11, 2, 12, 3, 13, 4, 14]
    assert out[0, :, 0, 0].tolist() == [0, 10, 0, 10, 0, 10, 1, 11, 2, 12]
