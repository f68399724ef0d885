"""Unit importance (FFN channels, query heads, KV heads) per block; higher score = keep.

Every criterion is an importance matrix I the shape of each weight W involved, summed over a unit's rows
(gate / up / q / k / v) and columns (down / o):
  magnitude      I = W^2 (score = its square root: the unit's weight norm)
  wanda          I = |W| * ||X_j||   (X: the Linear's inputs over the calibration tokens)
  taylor         I = |W * dL/dW|     (first-order loss change, L = the policy's action loss)
  dw_prune_high  score = -||dW_unit|| / ||W_VLM,unit||  (remove the units adaptation moved MOST)
  dw_prune_low   score = +||dW_unit|| / ||W_VLM,unit||  (remove the units adaptation moved LEAST)
  random         seeded uniform
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.parts import attn_parts, ffn_parts
from vlaprune.errors import VlapruneError
from vlaprune.scoring.probe import Probe

CRITERIA = ("magnitude", "wanda", "taylor", "dw_prune_high", "dw_prune_low", "random")


def unit_weights(block: nn.Module, kinds: set[str]) -> list[tuple[str, nn.Linear, str, str, int]]:
    """(path in block, Linear, unit kind "ffn"|"q"|"kv", axis "row"|"col", rows/cols per unit)."""
    out = []
    if "ffn" in kinds:
        mlp, ins, down = ffn_parts(block)
        out += [(f"mlp.{n}", getattr(mlp, n), "ffn", "row", 1) for n in ins]
        out.append((f"mlp.{down}", getattr(mlp, down), "ffn", "col", 1))
    if kinds & {"q", "kv"}:
        p = attn_parts(block)
        a, d = p["attn"], p["head_dim"]
        at = p["path"]
        out += [
            (f"{at}.q_proj", a.q_proj, "q", "row", d),
            (f"{at}.{p['o']}", getattr(a, p["o"]), "q", "col", d),
            (f"{at}.k_proj", a.k_proj, "kv", "row", d),
            (f"{at}.v_proj", a.v_proj, "kv", "row", d),
        ]
    return out


def reduce(block: nn.Module, kinds: set[str], importance: Callable[[str, nn.Linear], torch.Tensor]) -> dict:
    """Sum an importance matrix per unit: {"ffn": (n_ffn,), "q": (n_q,), "kv": (n_kv,)}."""
    out: dict[str, torch.Tensor] = {}
    for path, lin, kind, axis, size in unit_weights(block, kinds):
        imp = importance(path, lin).double()
        per = imp.sum(1) if axis == "row" else imp.sum(0)
        per = per.reshape(-1, size).sum(1)
        out[kind] = per if kind not in out else out[kind] + per
    return out


def _input_norms(probe: Probe, kinds: set[str]) -> dict[int, torch.Tensor]:
    """Sum of squared inputs per input feature, for every Linear involved, over the calibration batches."""
    sums: dict[int, torch.Tensor] = {}
    handles = []

    def hook(m, args):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        sums[id(m)] = sums.get(id(m), 0) + x.square().sum(0)

    for s in probe.stacks:
        for block in probe.layout.stacks[s].blocks:
            for _, lin, *_ in unit_weights(block, kinds):
                handles.append(lin.register_forward_pre_hook(hook))
    try:
        probe.mean_loss()
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


def _grads(probe: Probe) -> None:
    model = probe.layout.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    try:
        model.requires_grad_(True)
        for i, b in enumerate(probe.batches):
            (probe.loss(i, b) / len(probe.batches)).backward()
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def unit_scores(
    probe: Probe, criterion: str, kinds: dict[str, set[str]], *, dw_lookup: Callable[[str], Any] | None = None
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Per stack, per block: {kind: scores}. kinds: per stack, which of {"ffn", "q", "kv"} to score.

    dw_lookup(param_name) -> the VLM's weight for a VLA parameter name (dw criteria), or None if absent."""
    if criterion not in CRITERIA:
        raise VlapruneError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    names = {id(p): n for n, p in probe.layout.model.named_parameters()}
    norms = _input_norms(probe, set().union(*kinds.values())) if criterion == "wanda" else {}
    if criterion == "taylor":
        _grads(probe)
    gen = torch.Generator().manual_seed(probe.seed)
    out: dict[str, list[dict[str, torch.Tensor]]] = {}
    for s in probe.stacks:
        per_block = []
        for block in probe.layout.stacks[s].blocks:
            ks = kinds.get(s, set())
            if criterion == "magnitude":
                sc = {
                    k: v.sqrt()
                    for k, v in reduce(block, ks, lambda p, lin: lin.weight.detach().square()).items()
                }
            elif criterion == "wanda":
                sc = reduce(
                    block,
                    ks,
                    lambda p, lin: (
                        lin.weight.detach().abs() * norms.get(id(lin), torch.zeros(lin.in_features))[None, :]
                    ),
                )
            elif criterion == "taylor":
                # a weight the loss does not reach (e.g. the last VLM block's MLP in SmolVLA) has no grad: 0
                sc = reduce(block, ks, lambda p, lin: (lin.weight.detach() * _grad(lin.weight)).abs())
            elif criterion == "random":
                sc = {
                    k: torch.rand(len(v), generator=gen, dtype=torch.float64)
                    for k, v in reduce(block, ks, lambda p, lin: lin.weight.detach()).items()
                }
            else:
                sc = _dw(block, ks, names, dw_lookup, high=criterion == "dw_prune_high")
            per_block.append(sc)
        out[s] = per_block
    if criterion == "taylor":
        probe.layout.model.zero_grad(set_to_none=True)
    return out


def _grad(w: torch.Tensor) -> torch.Tensor:
    return w.grad if w.grad is not None else torch.zeros_like(w)


def _dw(block, kinds, names, lookup, high: bool) -> dict[str, torch.Tensor]:
    if lookup is None:
        raise VlapruneError("dW criteria need the base VLM: pass --base=VLM_CHECKPOINT (and --map if needed)")

    def base_of(lin):
        w = lookup(names[id(lin.weight)])
        if w is None:
            raise VlapruneError(f"the base VLM has no tensor for {names[id(lin.weight)]}; check --map")
        return w.to(torch.float32)

    diff = reduce(block, kinds, lambda p, lin: (lin.weight.detach().float() - base_of(lin)).square())
    base = reduce(block, kinds, lambda p, lin: base_of(lin).square())
    return {k: (-1 if high else 1) * (diff[k] / base[k].clamp_min(1e-30)).sqrt() for k in diff}
