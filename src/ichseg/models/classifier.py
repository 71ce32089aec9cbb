"""Stage 1: a small CNN that says, per slice, "hemorrhage or not" so that normal slices
can skip the (costlier) segmentation."""

from __future__ import annotations

import torch
from torch import nn


class SliceClassifier(nn.Module):
    """``blocks`` × (``convs_per_block`` × (3×3 conv, batch-norm, ReLU), 2×2 max-pool),
    global average and max pooling, one linear layer. Max pooling keeps a small bright bleed from being averaged
    away over a mostly normal slice. Returns ``outputs`` logits per slice (hemorrhage
    first, then any subtype or fracture heads)."""

    def __init__(
        self, in_channels: int = 1, base_filters: int = 16, blocks: int = 5, outputs: int = 1, convs_per_block: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for i in range(blocks):
            out = base_filters * 2 ** min(i, 3)
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(ch, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                ch = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(2 * ch, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → logits (N, outputs)."""
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.fc(pooled)
