"""GateProbe, as the paper defines it, and vlaprune's branch-gate variants. Higher score = keep.

gateprobe (default)   the paper's GateProbe (Drop-Then-Recovery, arXiv 2606.27755). One virtual gate a_i per
                      block on its whole residual update, h_i = h_{i-1} + a_i * F_i(h_{i-1}) with
                      F_i = block_i(h_{i-1}) - h_{i-1} (`gates.update_gates`), and
                          I(B_i) = E_x |dL_x/da_i| at a_i = 1 = E_x |<dL_x/dh_i, F_i(h_{i-1})>|:
                      per-example absolute value, then the mean over every calibration example of every
                      batch; one forward + backward per batch, no weight gradients. Always per block: a probe
                      with granularity "sublayer" is refused (use the branch variants for that).
gateprobe_branch      vlaprune's own: one scalar gate g shared by a block's two branches
                      (`gates.virtual_gates`), h1 = h + g*attn(h), h2 = h1 + g*mlp(h1), so the MLP reads
                      h + g*attn. Score -dL/dg with L the mean calibration loss: signed, summed over examples,
                      the first-order estimate of the loss *increase* when g goes 1 -> 0 (may be negative:
                      removing the block is predicted to help).
gateprobe_branch_abs  |dL/dg| of the same gates.
With sublayer granularity the branch variants put one gate on each branch; a block's score is the sum over
its two gates, the per-gate dL/dg are kept in `detail["dL_dg"]` and each sublayer's own score in
`detail["parts"]` ({"attn" | "mlp": {stack: per-block scores}}): what ranks attention-only and MLP-only
drops (`vlaprune drop --drop.part`, `vlaprune dtr --sweep.parts`).

Per-example values from one backward: gate i is a vector a of shape (B,), one value per example, broadcast
over the other dims of every branch output, so one backward of the batch loss L gives grad[b] = dL/da[b].
Assumptions: examples do not interact in the forward (eval mode, no batch norm, attention stays within an
example), so example b's own loss L_b depends on a[b] only; and L = sum_b w[b] * L_b, where L_b is what
lerobot's `forward(batch, reduction="none")` returns. Then dL_b/da = grad[b] / w[b], with w per family:
  pi0, pi0.5  L = mean over (batch, chunk, action dims); padded steps are not masked      -> w[b] = 1/B
  SmolVLA     padded steps (action_is_pad) masked, L = sum / (V * A) with V the valid steps of the batch,
              L_b = sum_b / (n_b * A)                                                      -> w[b] = n_b / V
              (1/B without action_is_pad; an example with no valid step has L_b = 0 and gets 0)
  OpenVLA-OFT L1 / diffusion loss: mean over (batch, chunk, action dims)               -> w[b] = 1/B
              (the adapter's `Layout.example_weights`)
  others      `Probe.example_weights(batch)` must give w (B,).
(The rules live with the families: `Family.example_weights`, `Layout.example_weights`.)
tests/scoring/test_gateprobe_paper.py checks these against finite differences of lerobot's per-example loss.

Coupled stacks (SmolVLA, pi0, pi0.5): the gate on a language block scales only that block's residual update,
while the action expert still reads the keys / values the block computes from its input. So gateprobe
scores exactly the paper's "keep K/V" language drop (the input norm and K/V projections stay, as a
cross-attention adapter), not the pair drop vlaprune's surgery performs today.
"""

from __future__ import annotations

import torch

from vlaprune.adapters import family_of
from vlaprune.errors import VlapruneError
from vlaprune.scoring.gates import Key, update_gates, virtual_gates
from vlaprune.scoring.probe import Probe, Scores, weights_frozen


def example_weights(probe: Probe, batch) -> torch.Tensor:
    """w (B,), float64 on the CPU: batch loss = sum_b w[b] * (example b's own loss); see the module doc."""
    rule = probe.example_weights or probe.layout.example_weights  # the Probe's, else the adapter's
    if rule is not None:
        return rule(batch).detach().double().cpu()
    fam = family_of(probe.layout.model)  # the family's rule (SmolVLA, pi0, pi0.5), also under --stacks
    if fam is not None and fam.example_weights is not None:
        return fam.example_weights(batch).detach().double().cpu()
    raise VlapruneError(
        f"gateprobe needs per-example loss weights for {probe.layout.family!r} models: build the "
        "Probe with example_weights=<batch -> (B,) weights of the batch loss>"
    )


def example_gradients(probe: Probe) -> dict[Key, torch.Tensor]:
    """dL_x/da_i at a = 1 for every calibration example x: {(stack, i): (N,) float64}, N = examples of all
    batches in order."""
    if probe.granularity != "block":
        raise VlapruneError(
            "gateprobe gates whole blocks (the paper's definition); use --granularity=block, or "
            "gateprobe_branch / gateprobe_branch_abs for one gate per sublayer"
        )
    per: dict[Key, list[torch.Tensor]] = {k: [] for k in probe.blocks()}
    with weights_frozen(probe.layout.model):
        for i, batch in enumerate(probe.batches):
            w = example_weights(probe, batch)
            with update_gates(probe.layout, probe.stacks, len(w)) as gates:
                loss = probe.loss(i, batch)
                if loss.requires_grad:  # False when no gated block reaches the loss
                    loss.backward()
                grads = gates.grads()
            for k, g in grads.items():
                g = g.detach().double().cpu()
                per[k].append(torch.where(w > 0, g / w.clamp_min(1e-300), 0.0))
    return {k: torch.cat(v) for k, v in per.items()}


def gateprobe(probe: Probe) -> Scores:
    """The paper's GateProbe: per block, the mean over calibration examples of |dL_x/da| (>= 0)."""
    grads = example_gradients(probe)
    blocks = {s: [0.0] * len(probe.layout.stacks[s]) for s in probe.stacks}
    for (s, i), g in grads.items():
        blocks[s][i] = float(g.abs().mean())
    n = len(next(iter(grads.values()))) if grads else 0
    detail = {"examples": n, "mean_dL_da": {f"{s}/{i}": float(g.mean()) for (s, i), g in grads.items()}}
    return Scores(blocks, detail)


def gate_gradients(probe: Probe) -> dict[Key, float]:
    """dL/dg for every branch gate (`virtual_gates`), L = mean loss over the calibration batches."""
    n = len(probe.batches)
    with (
        weights_frozen(probe.layout.model),
        virtual_gates(probe.layout, probe.stacks, probe.granularity) as g,
    ):
        for i, batch in enumerate(probe.batches):
            (probe.loss(i, batch) / n).backward()
        return g.grads()


def _branch_scores(probe: Probe, signed: bool) -> Scores:
    grads = gate_gradients(probe)
    blocks = {s: [0.0] * len(probe.layout.stacks[s]) for s in probe.stacks}
    for key, d in grads.items():
        blocks[key[0]][key[1]] += -d if signed else abs(d)
    detail: dict = {"dL_dg": {"/".join(map(str, k)): d for k, d in grads.items()}}
    if probe.granularity == "sublayer":  # per-sublayer scores, for attention- / MLP-only drops
        parts = {p: {s: [0.0] * len(probe.layout.stacks[s]) for s in probe.stacks} for p in ("attn", "mlp")}
        for (s, i, p), d in grads.items():
            parts[p][s][i] = -d if signed else abs(d)
        detail["parts"] = parts
    return Scores(blocks, detail)


def gateprobe_branch(probe: Probe) -> Scores:
    """-dL/dg of the shared branch gate(s), summed over examples (signed)."""
    return _branch_scores(probe, signed=True)


def gateprobe_branch_abs(probe: Probe) -> Scores:
    """|dL/dg| of the branch gate(s)."""
    return _branch_scores(probe, signed=False)
