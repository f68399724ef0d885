"""Random weights that show bugs: no exact zeros or ones (zero biases and unit norms would hide errors)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def make_nontrivial(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Add N(0, scale) noise to every floating-point parameter, in place, deterministically per seed."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.is_floating_point():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * scale)
    return model
