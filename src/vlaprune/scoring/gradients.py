"""The gradient metrics the DTR paper compares GateProbe with. Higher score = keep.

Parameter metrics, L = the mean calibration loss over the batches, theta = a block's parameters:
  taylor              block-level first-order Taylor, |sum_theta theta * dL/dtheta|: the first-order change of
                      L when the whole block's parameters go to 0.
  taylor_elementwise  LLM-Pruner's element-wise first-order Taylor, sum_theta |theta * dL/dtheta| (>= taylor).
  fisher_params       the parameter empirical Fisher, sum_theta (dL_batch/dtheta)^2 averaged over batches: one
                      backward per batch, so it is the Fisher of batch gradients, not of per-example ones
                      (per-example parameter gradients would cost one backward per example).
  hessian_trace       Hutchinson's estimate of tr(d^2 L / dtheta^2) over the block's parameters,
                      E_v[v^T H v] with Rademacher v, `Probe.probes` probes per batch; one Hessian-vector
                      product (double backward, math attention) gives every block's term at once, since the
                      cross-block terms vanish in expectation. Can be negative away from a minimum.
Gate metrics, on the paper's whole-update gate a_i (`gates.update_gates`, per example):
  fisher              E_x (dL_x/da_i)^2 at a = 1: the square of GateProbe's per-example gradient.
  integrated_gradients  integrated gradients of the mean loss along the gates of one stack at a time, all of
                      its gates moving together from 0 (every block of the stack removed) to 1, with
                      `Probe.ig_steps` midpoint steps: IG_i = (1/K) sum_k dL/da_i at a = (k + 1/2)/K; score
                      |IG_i|. Completeness: sum_i IG_i = L(stack on) - L(stack off) as K grows (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vlaprune.errors import VlapruneError
from vlaprune.scoring.gateprobe import example_gradients, example_weights
from vlaprune.scoring.gates import update_gates
from vlaprune.scoring.probe import Probe, Scores, weights_frozen


def _block_params(probe: Probe) -> dict[tuple[str, int], list[torch.nn.Parameter]]:
    """(stack, block) -> its parameters (each parameter counted once, in the first block that holds it)."""
    seen: set[int] = set()
    out: dict[tuple[str, int], list[torch.nn.Parameter]] = {}
    for s, i in probe.blocks():
        ps = []
        for p in probe.layout.stacks[s].blocks[i].parameters():
            if id(p) not in seen and p.is_floating_point():
                seen.add(id(p))
                ps.append(p)
        out[(s, i)] = ps
    return out


@contextlib.contextmanager
def _only_blocks_trainable(probe: Probe) -> Iterator[dict[tuple[str, int], list[torch.nn.Parameter]]]:
    """Only the scored blocks' parameters require grad (their .grad cleared before and after)."""
    params = _block_params(probe)
    with weights_frozen(probe.layout.model):
        for ps in params.values():
            for p in ps:
                p.requires_grad_(True)
                p.grad = None
        try:
            yield params
        finally:
            for ps in params.values():
                for p in ps:
                    p.grad = None


def _empty(probe: Probe) -> dict[str, list[float]]:
    return {s: [0.0] * len(probe.layout.stacks[s]) for s in probe.stacks}


def _mean_loss_grads(probe: Probe) -> tuple[dict, dict]:
    """({(stack, block): dL/dtheta of the mean calibration loss per parameter (zeros if unreached)},
    {(stack, block): its parameters})."""
    n = len(probe.batches)
    with _only_blocks_trainable(probe) as params:
        for i, batch in enumerate(probe.batches):
            loss = probe.loss(i, batch) / n
            if loss.requires_grad:
                loss.backward()
        return {
            k: [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in ps]
            for k, ps in params.items()
        }, params


def taylor(probe: Probe) -> Scores:
    """|sum_theta theta * dL/dtheta| per block (block-level first-order Taylor)."""
    grads, params = _mean_loss_grads(probe)
    out = _empty(probe)
    for (s, i), gs in grads.items():
        ps = params[(s, i)]
        out[s][i] = abs(sum(float((p.detach().double() * g.double()).sum()) for p, g in zip(ps, gs)))
    return Scores(out)


def taylor_elementwise(probe: Probe) -> Scores:
    """sum_theta |theta * dL/dtheta| per block (LLM-Pruner's element-wise first-order Taylor)."""
    grads, params = _mean_loss_grads(probe)
    out = _empty(probe)
    for (s, i), gs in grads.items():
        ps = params[(s, i)]
        out[s][i] = sum(float((p.detach().double() * g.double()).abs().sum()) for p, g in zip(ps, gs))
    return Scores(out)


def fisher_params(probe: Probe) -> Scores:
    """sum_theta (dL_batch/dtheta)^2 per block, averaged over the calibration batches."""
    out = _empty(probe)
    n = len(probe.batches)
    with _only_blocks_trainable(probe) as params:
        for i, batch in enumerate(probe.batches):
            for ps in params.values():
                for p in ps:
                    p.grad = None
            loss = probe.loss(i, batch)
            if loss.requires_grad:
                loss.backward()
            for (s, b), ps in params.items():
                out[s][b] += sum(float(p.grad.double().pow(2).sum()) for p in ps if p.grad is not None) / n
    return Scores(out)


def hessian_trace(probe: Probe) -> Scores:
    """Hutchinson estimate of each block's Hessian trace of the mean calibration loss (see the module doc)."""
    if probe.probes < 1:
        raise VlapruneError(f"--probes={probe.probes}: Hutchinson's estimate needs at least one probe")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(probe.seed)
    out = _empty(probe)
    n = len(probe.batches)
    with _only_blocks_trainable(probe) as params, sdpa_kernel(SDPBackend.MATH):  # double backward
        keys = list(params)
        flat = [p for k in keys for p in params[k]]
        for i, batch in enumerate(probe.batches):
            loss = probe.loss(i, batch) / n
            if not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, flat, create_graph=True, allow_unused=True)
            used = [(p, g) for p, g in zip(flat, grads) if g is not None]
            for _ in range(probe.probes):
                vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p, _ in used]
                dot = sum((g * v).sum() for (_, g), v in zip(used, vs))
                hvs = torch.autograd.grad(dot, [p for p, _ in used], retain_graph=True, allow_unused=True)
                vhv = {
                    id(p): float((v * hv).sum()) if hv is not None else 0.0
                    for (p, _), v, hv in zip(used, vs, hvs)
                }
                for k in keys:
                    out[k[0]][k[1]] += sum(vhv.get(id(p), 0.0) for p in params[k]) / probe.probes
    return Scores(out, {"probes": probe.probes})


def fisher(probe: Probe) -> Scores:
    """E_x (dL_x/da_i)^2 on the whole-update gate, at a = 1 (the mean square of GateProbe's gradients)."""
    grads = example_gradients(probe)
    out = _empty(probe)
    for (s, i), g in grads.items():
        out[s][i] = float(g.pow(2).mean())
    return Scores(out)


def integrated_gradients(probe: Probe) -> Scores:
    """|IG_i| of every block's gate along its stack's path from all-off to all-on (see the module doc)."""
    if probe.ig_steps < 1:
        raise VlapruneError(f"--ig_steps={probe.ig_steps}: integrated gradients need at least one step")
    if probe.granularity != "block":
        raise VlapruneError("integrated_gradients integrates the whole-block gates; use --granularity=block")
    k_steps, n = probe.ig_steps, len(probe.batches)
    signed = _empty(probe)
    with weights_frozen(probe.layout.model):
        for s in probe.stacks:
            for i, batch in enumerate(probe.batches):
                size = len(example_weights(probe, batch))
                with update_gates(probe.layout, [s], size) as gates:
                    for k in range(k_steps):
                        for key in gates.values:
                            gates.set(key, (k + 0.5) / k_steps)
                        loss = probe.loss(i, batch) / n
                        if loss.requires_grad:
                            loss.backward()
                    for (_, b), g in gates.grads().items():
                        signed[s][b] += float(g.sum()) / k_steps
    return Scores({s: [abs(v) for v in vals] for s, vals in signed.items()}, {"signed_ig": signed})
