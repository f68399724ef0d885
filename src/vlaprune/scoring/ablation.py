"""Exact ablation baselines: the loss really measured with blocks removed (gated to 0).

loo     leave-one-out: loss with block l removed minus the baseline loss (1 + number of blocks passes
        over the calibration batches). The ground truth GateProbe approximates to first order.
greedy  SLEB-style iterative removal: repeatedly remove the block whose removal raises the loss least;
        a block's score is the step at which it went (first removed = 0 = least important).
"""

from __future__ import annotations

from vlaprune.scoring.gates import virtual_gates
from vlaprune.scoring.probe import Probe, Scores


def _set_block(gates, stack: str, i: int, value: float, granularity: str) -> None:
    keys = [(stack, i)] if granularity == "block" else [(stack, i, "attn"), (stack, i, "mlp")]
    for k in keys:
        gates.set(k, value)


def loo(probe: Probe) -> Scores:
    """Exact leave-one-out: the loss with the block gated to 0 minus the baseline loss (signed)."""
    with virtual_gates(probe.layout, probe.stacks, "block") as gates:
        base = probe.mean_loss()
        blocks = {s: [] for s in probe.stacks}
        for s, i in probe.blocks():
            _set_block(gates, s, i, 0.0, "block")
            blocks[s].append(probe.mean_loss() - base)
            _set_block(gates, s, i, 1.0, "block")
    return Scores(blocks, {"baseline_loss": base})


def greedy(probe: Probe) -> Scores:
    """SLEB-style: repeatedly remove the block whose removal raises the loss least; score = removal step."""
    remaining = probe.blocks()
    order: list[tuple[str, int]] = []
    losses: list[float] = []
    with virtual_gates(probe.layout, probe.stacks, "block") as gates:
        while remaining:
            trial = []
            for s, i in remaining:
                _set_block(gates, s, i, 0.0, "block")
                trial.append(probe.mean_loss())
                _set_block(gates, s, i, 1.0, "block")
            best = min(range(len(remaining)), key=trial.__getitem__)
            s, i = remaining.pop(best)
            _set_block(gates, s, i, 0.0, "block")
            order.append((s, i))
            losses.append(trial[best])
    blocks = {s: [0.0] * len(probe.layout.stacks[s]) for s in probe.stacks}
    for step, (s, i) in enumerate(order):
        blocks[s][i] = float(step)
    return Scores(blocks, {"removal_order": [f"{s}/{i}" for s, i in order], "loss_after_each": losses})
