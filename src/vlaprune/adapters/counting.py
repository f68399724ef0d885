"""What each part of a model is: parameters and forward FLOPs, attributed to blocks (used by the anatomy).

FLOPs come from torch's own counter formulas (`torch.utils.flop_counter.flop_registry`: matmuls,
convolutions, attention), evaluated on one real forward pass. Attribution rule: every counted op is charged
to the *region* of the module most recently entered. That charges a block everything its submodules do,
and also the ops the policy runs between them in its own code: lerobot's SmolVLA / pi0 / pi0.5 call a
layer's `q/k/v_proj`, `o_proj` and `mlp` directly and do the attention math themselves, so the attention of
language block i is charged to block i. Joint attention of two coupled stacks (SmolVLA self-attention
layers, pi0 / pi0.5) runs after the expert block's projections and is charged to the action block.
Ops in modules outside every region go to `None` ("other").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def unique_params(module: nn.Module, seen: set[int] | None = None) -> int:
    """Number of parameters of `module` not already in `seen` (shared / tied tensors count once).

    `seen` (ids of parameters) is updated, so calling this over disjoint parts sums to the model total."""
    seen = set() if seen is None else seen
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


class _RegionFlops(TorchDispatchMode):
    """Adds the FLOPs of each counted aten op to `counts[current region]`."""

    def __init__(self) -> None:
        super().__init__()
        self.current: Hashable | None = None
        self.counts: dict[Hashable | None, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.counts[self.current] += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(
    model: nn.Module, forward: Callable[[], Any], regions: dict[nn.Module, Hashable]
) -> dict[Hashable | None, int]:
    """Run `forward()` once under a FLOP counter; return FLOPs per region key (None = outside all regions).

    regions: module -> key (e.g. the block `layers[3]` -> ("language", 3)); a region covers the module's
    whole subtree. Attention runs on the math backend while counting so that its matmuls are seen
    (CPU fused kernels have no counter formula). FLOPs = 2 x multiply-accumulates, torch's convention.
    """
    key_of: dict[nn.Module, Hashable] = {}
    for root, key in regions.items():
        for m in root.modules():
            key_of[m] = key
    mode = _RegionFlops()

    def enter(module: nn.Module, args: Any) -> None:
        mode.current = key_of.get(module)

    handle = nn.modules.module.register_module_forward_pre_hook(enter)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), mode:
            forward()
    finally:
        handle.remove()
    return dict(mode.counts)
