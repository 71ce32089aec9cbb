"""Model builders: configs in, networks out, so inference needs no training code."""

from __future__ import annotations

from torch import nn

from ichseg.config import ClassifierConfig, UNetConfig
from ichseg.models.classifier import SliceClassifier
from ichseg.models.unet import UNet, count_parameters

__all__ = ["SliceClassifier", "UNet", "build_model", "count_parameters"]


def build_model(config: UNetConfig | ClassifierConfig) -> nn.Module:
    """Instantiate the network a config describes."""
    if isinstance(config, UNetConfig):
        if config.input_size_px % 2**config.depth:
            raise ValueError(f"U-Net input {config.input_size_px}px is not divisible by 2**depth={2**config.depth}")
        if config.heads and config.heads[0] != "hemorrhage":
            raise ValueError(f"U-Net heads must start with 'hemorrhage', got {config.heads}")
        if config.normalize not in ("none", "parenchyma"):
            raise ValueError(f"unknown normalize {config.normalize!r} (none or parenchyma)")
        return UNet(
            config.in_channels, config.base_filters, config.depth, config.batch_norm, config.output_prior, len(config.heads)
        )
    if isinstance(config, ClassifierConfig):
        if not config.heads or config.heads[0] != "hemorrhage":
            raise ValueError(f"classifier heads must start with 'hemorrhage', got {config.heads}")
        return SliceClassifier(config.in_channels, config.base_filters, config.blocks, len(config.heads), config.convs_per_block)
    raise TypeError(f"no model for {type(config).__name__}")
