"""GateProbe: one forward + backward of the action loss gives dL/dg for every block's virtual gate at once.

With h_out = h_in + g * F(h_in) and g = 1, dL/dg = sum over tokens of <dL/dh_out, F(h_in)>. Scores:
  gateprobe      -dL/dg: the first-order (Taylor) estimate of the loss *increase* when g goes 1 -> 0
                 (the default; may be negative: removing the block is predicted to help)
  gateprobe_abs  |dL/dg|: sensitivity magnitude
With sublayer granularity a block's score is the sum over its attention and MLP gates (the first-order
estimate of removing both), and the per-sublayer values are kept in `detail`.
"""

from __future__ import annotations

from vlaprune.scoring.gates import virtual_gates
from vlaprune.scoring.probe import Probe, Scores, weights_frozen


def gate_gradients(probe: Probe) -> dict[tuple, float]:
    """dL/dg for every gate, L = mean loss over the calibration batches."""
    n = len(probe.batches)
    with (
        weights_frozen(probe.layout.model),
        virtual_gates(probe.layout, probe.stacks, probe.granularity) as g,
    ):
        for i, batch in enumerate(probe.batches):
            (probe.loss(i, batch) / n).backward()
        return g.grads()


def _scores(probe: Probe, signed: bool) -> Scores:
    grads = gate_gradients(probe)
    blocks = {s: [0.0] * len(probe.layout.stacks[s]) for s in probe.stacks}
    for key, d in grads.items():
        blocks[key[0]][key[1]] += -d if signed else abs(d)
    detail = {"dL_dg": {"/".join(map(str, k)): d for k, d in grads.items()}}
    return Scores(blocks, detail)


def gateprobe(probe: Probe) -> Scores:
    return _scores(probe, signed=True)


def gateprobe_abs(probe: Probe) -> Scores:
    return _scores(probe, signed=False)
