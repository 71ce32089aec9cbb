"""AdaBN for a new scanner: only the batch-norm statistics move, they become the average
over the site's slices, and a network without batch norm is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichseg.config import UNetConfig
from ichseg.models import build_model
from ichseg.train.bn_adapt import adapt_batchnorm_stats, batchnorm_layers


def _net(batch_norm: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(UNetConfig(input_size_px=32, base_filters=4, depth=3, batch_norm=batch_norm)).eval()


def _images(level: int, n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(level)
    return np.clip(rng.normal(level, 20, (n, 1, 32, 32)), 0, 255).astype(np.uint8)


def test_only_the_statistics_move_and_the_base_is_untouched() -> None:
    net = _net(True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dark, bright = adapt_batchnorm_stats(net, _images(60), batch=5), adapt_batchnorm_stats(net, _images(180), batch=5)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # the base network is a copy's source, not changed
    for name, v in dark.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            assert not torch.allclose(v, before[name])
        elif not name.endswith("num_batches_tracked"):
            assert torch.equal(v, before[name]), name  # weights and biases as they were
    first = batchnorm_layers(dark)[0], batchnorm_layers(bright)[0]
    assert not torch.allclose(first[0].running_mean, first[1].running_mean)
    assert not dark.training and first[0].momentum == batchnorm_layers(net)[0].momentum


def test_the_first_layer_mean_is_the_plain_average_whatever_the_batching() -> None:
    # equal batches: the cumulative average of batch means is the mean over all images (deeper
    # layers see batch-normalised inputs, as in training, so only the first is exact)
    net, x = _net(True), _images(120)
    a, b = adapt_batchnorm_stats(net, x, batch=3), adapt_batchnorm_stats(net, x, batch=12)
    assert torch.allclose(batchnorm_layers(a)[0].running_mean, batchnorm_layers(b)[0].running_mean, atol=1e-5)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="no batch-norm layer"):
        adapt_batchnorm_stats(_net(False), _images(100))
    with pytest.raises(ValueError, match="no images"):
        adapt_batchnorm_stats(_net(True), _images(100)[:0])
