"""Batch-norm statistics re-estimated on a new scanner's images (AdaBN).

Why: what a new scanner changes first is intensity (contrast, kernel, noise), and a
batch-norm network carries what it expects of intensities in its running means and
variances. Re-estimating those on the site's own slices, with every weight left as it
was, moves the network to the scanner without any label and without the few dozen
patients' bleeds pulling the weights (which is what a short fine-tuning on them does:
issue 19, docs/RESULTS.md). Li et al., "Revisiting batch normalization for practical
domain adaptation" (2016), named it AdaBN.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ichseg.train.loop import to_tensor


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm_stats(model: nn.Module, images_u8: np.ndarray, batch: int = 16, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on
    ``images_u8`` (N, C, H, W uint8, the network's inputs) instead of its training data's:
    the cumulative average of the batch statistics of ``batch``-slice batches, each layer
    seeing batch-normalised inputs from the layers before it, as in training;
    weights and biases are unchanged, and so is ``model``. A network without batch norm
    is an error (there is nothing to adapt)."""
    out = copy.deepcopy(model)
    layers = batchnorm_layers(out)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no batch-norm layer: nothing to re-estimate")
    if len(images_u8) == 0:
        raise ValueError("no images to re-estimate the batch-norm statistics on")
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch, not an exponential one
    out.train()  # batch norm updates its statistics only in training mode
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            out(to_tensor(images_u8[i : i + batch], channels_last))
    for m, mom in zip(layers, saved, strict=True):
        m.momentum = mom
    return out.eval()
