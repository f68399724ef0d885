"""Virtual gates: a scalar g on each residual branch of chosen blocks, h + g*attn(h), then h + g*mlp(h).

g = 1 leaves every output bit-identical (x * 1.0 == x in IEEE arithmetic); g = 0 removes the block's
contribution exactly (the residual stream passes through unchanged). The gates are forward hooks on the
branch modules themselves (the attention output projection and the MLP), not on the block's forward,
because lerobot's SmolVLA / pi0 / pi0.5 call those submodules directly. Hooks are always removed on exit.

    with virtual_gates(layout, ["language"], granularity="block") as gates:
        loss = loss_fn(batch); loss.backward()
        gates.grads()   # {("language", 3): dL/dg, ...}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.parts import find_branches
from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError

GRANULARITIES = ("block", "sublayer")
Key = tuple  # (stack, block) or (stack, block, "attn" | "mlp")


def branch_modules(layout: Layout, stack: str) -> list[dict[str, nn.Module]]:
    """Per block of `stack`: {"attn": attention output projection, "mlp": MLP, "entry": first norm}."""
    s = layout.stacks[stack]
    out = []
    for i, block in enumerate(s.blocks):
        br = find_branches(block)
        if br is None:
            raise VlapruneError(
                f"stack {stack!r} block {i} ({type(block).__name__}) has no recognisable residual branches "
                "(an attention module with o_proj/out_proj/proj and an mlp/ffn); gates cannot be placed on it"
            )
        out.append(
            {
                "attn": block.get_submodule(br.attn),
                "mlp": block.get_submodule(br.mlp),
                "entry": block.get_submodule(br.entry) if br.entry else None,
            }
        )
    return out


def _scale(out: Any, g: torch.Tensor) -> Any:
    if isinstance(out, tuple):  # attention modules may return (output, weights)
        return (out[0] * g.to(out[0].dtype), *out[1:])
    return out * g.to(out.dtype)


class VirtualGates:
    """The live gates. `values[key]` is a 0-dim tensor (requires grad) shared by every call of its branch."""

    def __init__(self, keys: list[Key], device: torch.device) -> None:
        self.values: dict[Key, torch.Tensor] = {
            k: torch.ones((), device=device, requires_grad=True) for k in keys
        }

    def set(self, key: Key, value: float) -> None:
        with torch.no_grad():
            self.values[key].fill_(value)

    def reset(self) -> None:
        for k in self.values:
            self.set(k, 1.0)
            self.values[k].grad = None

    def grads(self) -> dict[Key, float]:
        return {k: (0.0 if v.grad is None else float(v.grad)) for k, v in self.values.items()}


@contextlib.contextmanager
def virtual_gates(
    layout: Layout, stacks: list[str] | None = None, granularity: str = "block"
) -> Iterator[VirtualGates]:
    """Gates on every block of `stacks` (default: all). granularity "block": one gate per block on both
    branches, keys (stack, i); "sublayer": one per branch, keys (stack, i, "attn") and (stack, i, "mlp")."""
    if granularity not in GRANULARITIES:
        raise VlapruneError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    stacks = list(layout.stacks) if stacks is None else stacks
    plan: list[tuple[Key, nn.Module]] = []
    for name in stacks:
        for i, mods in enumerate(branch_modules(layout, name)):
            for part in ("attn", "mlp"):
                key = (name, i) if granularity == "block" else (name, i, part)
                plan.append((key, mods[part]))
    device = next(layout.model.parameters()).device
    gates = VirtualGates(list(dict.fromkeys(k for k, _ in plan)), device)
    handles = []
    try:
        for key, module in plan:
            g = gates.values[key]
            handles.append(module.register_forward_hook(lambda m, args, out, g=g: _scale(out, g)))
        yield gates
    finally:
        for h in handles:
            h.remove()
