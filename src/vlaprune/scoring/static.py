"""Baselines that need no data.

magnitude      mean |w| over the block's weight matrices (higher = keep)
random         uniform random scores, seeded
position_last  keep the first blocks, drop from the end (SmolVLA-style truncation: score = n - index)
position_first drop from the start (score = index + 1)
"""

from __future__ import annotations

import torch

from vlaprune.scoring.probe import Probe, Scores


def magnitude(probe: Probe) -> Scores:
    """Mean |w| of the block's parameters (no data)."""
    out = {}
    for s in probe.stacks:
        vals = []
        for block in probe.layout.stacks[s].blocks:
            ws = [p.detach().abs().float() for p in block.parameters() if p.dim() >= 2]
            vals.append(float(torch.cat([w.flatten() for w in ws]).mean()) if ws else 0.0)
        out[s] = vals
    return Scores(out)


def random(probe: Probe) -> Scores:
    """Seeded uniform random scores (no data)."""
    gen = torch.Generator().manual_seed(probe.seed)
    return Scores({s: torch.rand(len(probe.layout.stacks[s]), generator=gen).tolist() for s in probe.stacks})


def position_last(probe: Probe) -> Scores:
    """Keep-first truncation: later blocks score lower, so the last ones go first (no data)."""
    return Scores(
        {
            s: [float(len(probe.layout.stacks[s]) - i) for i in range(len(probe.layout.stacks[s]))]
            for s in probe.stacks
        }
    )


def position_first(probe: Probe) -> Scores:
    """Drop-first: earlier blocks score lower, so the first ones go first (no data)."""
    return Scores({s: [float(i + 1) for i in range(len(probe.layout.stacks[s]))] for s in probe.stacks})
