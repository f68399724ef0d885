"""What every scoring method gets (`Probe`) and returns (`Scores`).

A method is a plain function `method(probe) -> Scores`; higher score = more important (keep).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.stack import Layout
from vlaprune.data import LossFn


@dataclass
class Probe:
    """layout: the model's stacks. stacks: names of the stacks to score. batches / loss: calibration
    batches and loss(i, batch) with fixed noise per batch. granularity: "block" or "sublayer" gates.
    example_weights: batch -> w (B,) with loss = sum_b w[b] * (example b's own loss), for per-example
    methods (gateprobe); None: the lerobot family's rule (`gateprobe.example_weights`). probes / ig_steps /
    span: settings of hessian_trace / integrated_gradients / contiguous_cossim."""

    layout: Layout
    stacks: list[str]
    batches: list[dict]
    loss: LossFn
    seed: int = 0
    granularity: str = "block"
    example_weights: Callable[[Any], torch.Tensor] | None = None
    # method settings: Hutchinson probes (hessian_trace), integration steps (integrated_gradients), span of
    # contiguous blocks (contiguous_cossim)
    probes: int = 8
    ig_steps: int = 8
    span: int = 2

    def mean_loss(self) -> float:
        """Mean calibration loss under whatever gates/hooks are active (no grad)."""
        with torch.no_grad():
            return sum(float(self.loss(i, b)) for i, b in enumerate(self.batches)) / len(self.batches)

    def blocks(self) -> list[tuple[str, int]]:
        return [(s, i) for s in self.stacks for i in range(len(self.layout.stacks[s]))]


@dataclass
class Scores:
    """blocks: per stack, one score per block (higher = keep). detail: method-specific extras (JSON-able)."""

    blocks: dict[str, list[float]]
    detail: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def weights_frozen(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad (so a backward computes only what the gates need), then restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
