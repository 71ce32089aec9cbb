"""Scanner augmentation: random draws of :mod:`ichseg.data.scanner`'s looks.

A network that only ever saw CT-ICH's export reads a scanner's texture as something new
(issue 14: a normal scanner head with every slice head at 0.7-0.9). The transform is
seeded through MONAI's ``set_random_state`` (so a resumed run repeats its batches) and
leaves the mask alone: none of the looks moves anatomy.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform, RandomizableTransform

from ichseg.data.scanner import correlated_noise_float, jpeg_float, sharpen_float, skull_rim_float

BRAIN_WINDOW_HU = 120.0  # width of CT-ICH's brain window (ichseg.data.windows): 1 HU = 1/120 of it


class RandScannerd(RandomizableTransform, MapTransform):
    """Each with its own probability: thin-slice noise (σ 0.01-0.05 of the window,
    correlation 0.6-1.5 px), a sharp kernel (amount 0.3-1.5), JPEG at quality 25-90;
    applied in that order (the noise is in the scan before a kernel enhances it and
    before any export compresses it). With ``prob_rim``, first a bright rim along the
    inner table of the skull (5-30 HU over 1.5-5 px; :func:`skull_rim_float`) on every
    brain-window channel, the mask left as it is: a rim is not blood."""

    def __init__(
        self,
        keys: str = "image",
        prob_jpeg: float = 0.25,
        prob_sharp: float = 0.2,
        prob_noise: float = 0.2,
        prob_rim: float = 0.0,
        windows: tuple[str, ...] = (),
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.probs = (prob_jpeg, prob_sharp, prob_noise)
        self.prob_rim = prob_rim
        # channel roles for the skull rim: the input is [slice-k windows..., ..., slice+k windows...]
        self.windows = tuple(windows)
        if prob_rim and ("brain" not in windows or "bone" not in windows):
            raise ValueError(f"the skull rim needs the brain and bone windows among the inputs, got {windows}")

    def __call__(self, data):
        d = dict(data)
        r = self.R
        do_jpeg, do_sharp, do_noise = (r.random() < p for p in self.probs)
        quality = int(r.randint(25, 91))
        amount = float(r.uniform(0.3, 1.5))
        std, corr = float(r.uniform(0.01, 0.05)), float(r.uniform(0.6, 1.5))
        seed = int(r.randint(2**31 - 1))
        do_rim, rim_hu, rim_px = False, 0.0, 0.0
        if self.prob_rim:  # drawn only when asked, so runs without it keep their random stream
            do_rim = r.random() < self.prob_rim
            rim_hu, rim_px = float(r.uniform(5.0, 30.0)), float(r.uniform(1.5, 5.0))
        for key in self.key_iterator(d):
            img = np.asarray(d[key], np.float32)
            if do_rim:  # a property of the scan, so before its noise, kernel and export
                img = self._rim(img, rim_hu / BRAIN_WINDOW_HU, rim_px)
            if do_noise:
                img = correlated_noise_float(img, std, corr, np.random.default_rng(seed))
            if do_sharp:
                img = sharpen_float(img, amount)
            if do_jpeg:
                img = jpeg_float(img, quality)
            d[key] = img
        return d

    def _rim(self, img: np.ndarray, excess: float, width_px: float) -> np.ndarray:
        w = len(self.windows)
        centre = (len(img) // w) // 2  # the slice itself among its context neighbours
        brain = [j * w + self.windows.index("brain") for j in range(len(img) // w)]
        return skull_rim_float(img, brain, centre * w + self.windows.index("bone"), excess, width_px)
