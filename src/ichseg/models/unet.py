"""The paper's U-Net, written out because its exact shape (no batch-norm, no dropout,
transposed-conv decoder) is not one of MONAI's stock networks."""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(in_ch: int, out_ch: int, batch_norm: bool = False) -> nn.Sequential:
    """Two 3×3 conv + ReLU, padding 1, so skip connections line up without cropping;
    optionally with batch-norm after each conv (not in the paper; it speeds convergence)."""
    layers: list[nn.Module] = []
    for i, o in ((in_ch, out_ch), (out_ch, out_ch)):
        layers.append(nn.Conv2d(i, o, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(o))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder-decoder with skip concatenation.

    With the defaults (``base_filters=32``, ``depth=4``) the encoder has 32/64/128/256
    filters, each level followed by a 2×2 max-pool, then a 256-filter bottleneck, as the
    paper describes. The decoder mirrors it with 2×2 transposed convolutions. The last
    1×1 conv returns *logits*; the paper's sigmoid is applied by the loss
    (``BCEWithLogits``) and at inference, which is the same function but numerically safer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_filters: int = 32,
        depth: int = 4,
        batch_norm: bool = False,
        output_prior: float | None = None,
        heads: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        widths = [base_filters * 2**i for i in range(depth)]
        self.depth = depth
        self.down = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.down.append(_double_conv(ch, w, batch_norm))
            ch = w
        self.pool = nn.MaxPool2d(2)
        # The paper keeps the bottleneck at the deepest encoder width (256 for 32 filters).
        self.bottleneck = _double_conv(ch, widths[-1], batch_norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        ch = widths[-1]
        for w in reversed(widths):
            self.up.append(nn.ConvTranspose2d(ch, w, kernel_size=2, stride=2))
            self.dec.append(_double_conv(2 * w, w, batch_norm))
            ch = w
        self.head = nn.Conv2d(ch, 1, kernel_size=1)
        # slice-level heads on the bottleneck: average and max pooling (max keeps a small
        # bright bleed from being averaged away over a normal slice), one linear layer
        self.heads = nn.Linear(2 * widths[-1], heads) if heads else None
        self._init_weights()
        if output_prior is not None:
            # Start predicting blood with probability ``output_prior`` everywhere (the
            # focal-loss trick): the early BCE gradient then no longer drowns the Dice term.
            nn.init.constant_(self.head.bias, float(torch.logit(torch.tensor(output_prior))))

    def _init_weights(self) -> None:
        """He-normal initialisation, as in the original U-Net paper.

        With no batch-norm, PyTorch's default (smaller-variance) init shrinks the signal
        through the 18 conv layers and the network sits at "all background" for epochs at
        lr 1e-4; He init keeps activations at unit scale so learning starts at once.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Input (N, C, H, W) with H and W divisible by 2**depth; output logits (N, 1, H, W),
        and with slice heads also their logits (N, heads) as a second output."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        slice_logits = None
        if self.heads is not None:
            slice_logits = self.heads(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = up(x)
            x = dec(torch.cat([x, skip], dim=1))
        seg = self.head(x)
        return seg if slice_logits is None else (seg, slice_logits)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the figure papers quote."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
