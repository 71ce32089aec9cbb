"""A U-Net ensemble as one network: the members' probabilities averaged, returned as logits
so that every runtime and the post-processing treat it like a single U-Net."""

from __future__ import annotations

import torch
from torch import nn

#: Probabilities are clamped to [EPS, 1 - EPS] before the logit, so averaged certainties
#: stay finite in float32 on every runtime.
EPS = 1e-6


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(EPS, 1 - EPS)
    return torch.log(p) - torch.log1p(-p)


class EnsembleUNet(nn.Module):
    """Runs every member on the same input and averages their sigmoid outputs (mask, and
    the slice heads when the members have them), as nnU-Net ensembles its folds."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        outs = [m(x) for m in self.members]
        if isinstance(outs[0], tuple):
            seg = torch.stack([torch.sigmoid(o[0]) for o in outs]).mean(0)
            heads = torch.stack([torch.sigmoid(o[1]) for o in outs]).mean(0)
            return _logit(seg), _logit(heads)
        return _logit(torch.stack([torch.sigmoid(o) for o in outs]).mean(0))
