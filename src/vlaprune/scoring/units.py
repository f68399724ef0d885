"""Unit importance (FFN channels, query heads, KV heads) per block.

Every criterion yields a per-unit quantity m; `unit_scores` orients it into a score (higher = keep): with
direction "low" (the default) the units with the lowest m go, with "high" those with the highest m.
Importance criteria are an importance matrix I the shape of each weight W involved, summed over a unit's
rows (gate / up / q / k / v, fc1, fused qkv) and columns (down / o, fc2, proj):
  magnitude   I = W^2 (m = its square root: the unit's weight norm)
  wanda       I = |W| * ||X_j||   (X: the Linear's inputs over the calibration tokens)
  taylor      I = |W * dL/dW|     (first-order loss change, L = the policy's action loss)
  flap        FLAP (An et al., 2024): m_j = Var_tokens(X_j) * ||W_:,j||^2 on the output projection's input
              j (down_proj / fc2 column for a channel, the head's o_proj columns summed for a head): the
              fluctuation of what the unit feeds into the residual stream. Its bias compensation (the
              removed unit's mean contribution W_:,j * E[X_j] added to the output bias) is an option of the
              removal (`--flap_bias`), which uses `flap_means`.
  random      seeded uniform
The dW criteria measure how far VLM-to-VLA adaptation moved a unit: `dw` (vlaprune's reconstruction,
`dw_reconstruction` below, on the same row / column sums as the criteria above) and the divergence paper's
public-code recipes `dw_openvla` / `dw_pi05` (`vlaprune.scoring.dw_units`); `dw_prune_high` / `dw_prune_low`
are the older names of dw with direction high / low.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.parts import attn_parts, ffn_parts
from vlaprune.errors import VlapruneError
from vlaprune.scoring.dw_units import PRESETS as DW_PRESETS
from vlaprune.scoring.dw_units import movement
from vlaprune.scoring.probe import Probe
from vlaprune.surgery.ratios import DIRECTIONS

IMPORTANCE = ("magnitude", "wanda", "taylor", "flap", "random")
LEGACY = {"dw_prune_high": ("dw", "high"), "dw_prune_low": ("dw", "low")}
CRITERIA = (*IMPORTANCE, "dw", *DW_PRESETS, *LEGACY)


def unit_weights(block: nn.Module, kinds: set[str]) -> list[tuple[str, nn.Linear, str, str, int]]:
    """(path in block, Linear, unit kind "ffn"|"q"|"kv", axis "row"|"col"|"qkv", rows/cols per unit).
    axis "qkv": a fused q/k/v projection whose rows are (part, head, row in head); its heads are the units.
    A kv-only block (left by a keep-K/V drop) has none: it scores {} and unit cuts pass it by."""
    out = []
    if getattr(block, "kv_only", False):
        return out
    if "ffn" in kinds:
        mlp, ins, down = ffn_parts(block)
        out += [(f"mlp.{n}", getattr(mlp, n), "ffn", "row", 1) for n in ins]
        out.append((f"mlp.{down}", getattr(mlp, down), "ffn", "col", 1))
    if kinds & {"q", "kv"}:
        p = attn_parts(block)
        a, d = p["attn"], p["head_dim"]
        at = p["path"]
        out.append((f"{at}.{p['o']}", getattr(a, p["o"]), "q", "col", d))
        if p["qkv"]:
            out.append((f"{at}.qkv", a.qkv, "q", "qkv", d))
        else:
            out += [
                (f"{at}.q_proj", a.q_proj, "q", "row", d),
                (f"{at}.k_proj", a.k_proj, "kv", "row", d),
                (f"{at}.v_proj", a.v_proj, "kv", "row", d),
            ]
    return out


def reduce(block: nn.Module, kinds: set[str], importance: Callable[[str, nn.Linear], torch.Tensor]) -> dict:
    """Sum an importance matrix per unit: {"ffn": (n_ffn,), "q": (n_q,), "kv": (n_kv,)} (a fused qkv's heads
    have no separate KV heads: "kv" is zeros there)."""
    out: dict[str, torch.Tensor] = {}
    for path, lin, kind, axis, size in unit_weights(block, kinds):
        imp = importance(path, lin).double()
        per = imp.sum(0) if axis == "col" else imp.sum(1)
        per = per.reshape(3, -1, size).sum((0, 2)) if axis == "qkv" else per.reshape(-1, size).sum(1)
        out[kind] = per if kind not in out else out[kind] + per
    if "q" in out and "kv" not in out:
        out["kv"] = torch.zeros_like(out["q"])
    return out


Stats = dict[int, tuple[int, torch.Tensor, torch.Tensor]]


def input_stats(probe: Probe, kinds: dict[str, set[str]]) -> Stats:
    """Per Linear a unit owns (by id): (tokens, sum, sum of squares) of each input feature over the
    calibration batches (float64, (in_features,)). One no-grad pass (`probe.mean_loss`)."""
    stats: dict[int, list] = {}
    handles = []

    def hook(m, args):
        x = args[0].detach().double().reshape(-1, args[0].shape[-1])
        st = stats.setdefault(id(m), [0, 0, 0])
        st[0], st[1], st[2] = st[0] + x.shape[0], st[1] + x.sum(0), st[2] + x.square().sum(0)

    for s in probe.stacks:
        for block in probe.layout.stacks[s].blocks:
            for _, lin, *_ in unit_weights(block, kinds.get(s, set())):
                handles.append(lin.register_forward_pre_hook(hook))
    try:
        probe.mean_loss()
    finally:
        for h in handles:
            h.remove()
    return {k: tuple(v) for k, v in stats.items()}


def flap_means(stats: dict, lin: nn.Linear) -> torch.Tensor:
    """E[X_j] of `lin`'s inputs over the calibration tokens (what FLAP's bias compensation adds back)."""
    n, total, _ = stats[id(lin)]
    return (total / max(n, 1)).float()


def _flap(stats: dict, lin: nn.Linear, axis: str) -> torch.Tensor:
    if axis != "col" or id(lin) not in stats:  # only the output projection's inputs count
        return torch.zeros_like(lin.weight, dtype=torch.float64)
    n, total, sq = stats[id(lin)]
    var = (sq / max(n, 1) - (total / max(n, 1)).square()).clamp_min(0)
    return lin.weight.detach().double().square() * var[None, :]


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


@dataclass
class _Pass:
    """What one scoring pass shares between blocks: calibration input stats (wanda / flap), each Linear's
    unit axis ("row" / "col", flap), the seeded generator (random), parameter names and the base-VLM
    lookup (dw criteria)."""

    stats: dict | None
    gen: torch.Generator
    names: dict[int, str]
    dw_lookup: Callable[[str], Any] | None
    axes: dict[int, str] = field(default_factory=dict)


def _block_scores(criterion: str, block: nn.Module, ks: set[str], ps: _Pass) -> dict[str, torch.Tensor]:
    """{kind: criterion value per unit} for one block, before orienting (see `unit_scores`)."""
    stats = ps.stats
    ps.axes |= {id(lin): axis for _, lin, _, axis, _ in unit_weights(block, ks)}
    if criterion == "magnitude":
        return {
            k: v.sqrt() for k, v in reduce(block, ks, lambda p, lin: lin.weight.detach().square()).items()
        }
    if criterion == "wanda":
        return reduce(block, ks, lambda p, lin: lin.weight.detach().abs() * _sq(stats, lin).sqrt()[None, :])
    if criterion == "flap":
        return reduce(block, ks, lambda p, lin: _flap(stats, lin, ps.axes[id(lin)]))
    if criterion == "taylor":
        # a weight the loss does not reach (e.g. the last VLM block's MLP in SmolVLA) has no grad: 0
        return reduce(block, ks, lambda p, lin: (lin.weight.detach() * _grad(lin.weight)).abs())
    if criterion == "random":
        return {
            k: torch.rand(len(v), generator=ps.gen, dtype=torch.float64)
            for k, v in reduce(block, ks, lambda p, lin: lin.weight.detach()).items()
        }
    if criterion == "dw":
        return dw_reconstruction(block, ks, _base_of(ps.names, ps.dw_lookup))
    return movement(block, ks, criterion, _base_of(ps.names, ps.dw_lookup))


def unit_scores(
    probe: Probe,
    criterion: str,
    kinds: dict[str, set[str]],
    *,
    dw_lookup: Callable[[str], Any] | None = None,
    direction: str = "low",
    stats: dict | None = None,
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Per stack, per block: {kind: scores}, higher = keep. kinds: per stack, which of {"ffn", "q", "kv"}
    to score. direction "low": the units with the lowest criterion value score lowest (are removed first);
    "high": the highest (for dW: remove the most-moved units).

    dw_lookup(param_name) -> the VLM's weight for a VLA parameter name (dw criteria), or None if absent.
    stats: `input_stats` of an earlier pass, reused by wanda / flap (computed here when absent)."""
    if criterion not in CRITERIA:
        raise VlapruneError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    if direction not in DIRECTIONS:
        raise VlapruneError(f"unknown direction {direction!r}; choose low or high")
    criterion, direction = LEGACY.get(criterion, (criterion, direction))
    names = {id(p): n for n, p in probe.layout.model.named_parameters()}
    if criterion in ("wanda", "flap") and stats is None:
        stats = input_stats(probe, kinds)
    if criterion == "taylor":
        _grads(probe)
    ps = _Pass(stats, torch.Generator().manual_seed(probe.seed), names, dw_lookup)
    out: dict[str, list[dict[str, torch.Tensor]]] = {}
    for s in probe.stacks:
        out[s] = []
        for block in probe.layout.stacks[s].blocks:
            sc = _block_scores(criterion, block, kinds.get(s, set()), ps)
            out[s].append({k: v if direction == "low" else -v for k, v in sc.items()})
    if criterion == "taylor":
        probe.layout.model.zero_grad(set_to_none=True)
    return out


def dw_reconstruction(
    block: nn.Module, kinds: set[str], base_of: Callable[[nn.Linear], Any]
) -> dict[str, torch.Tensor]:
    """vlaprune's dW criterion: per unit, sqrt(sum ||dW||^2 / sum ||W_VLM||^2) over all of its rows and
    columns (the same sums `reduce` makes for every criterion); higher = moved more."""
    diff = reduce(block, kinds, lambda p, lin: (lin.weight.detach().float() - base_of(lin)).square())
    base = reduce(block, kinds, lambda p, lin: base_of(lin).square())
    return {k: (diff[k] / base[k].clamp_min(1e-30)).sqrt() for k in diff}


def _sq(stats: Stats, lin: nn.Linear) -> torch.Tensor:
    """Sum of squared inputs per input feature (zeros for a Linear the calibration pass never ran)."""
    return stats[id(lin)][2].float() if id(lin) in stats else torch.zeros(lin.in_features)


def _grad(w: torch.Tensor) -> torch.Tensor:
    return w.grad if w.grad is not None else torch.zeros_like(w)


def _base_of(names: dict[int, str], lookup: Callable[[str], Any] | None) -> Callable[[nn.Linear], Any]:
    if lookup is None:
        raise VlapruneError("dW criteria need the base VLM: pass --base=VLM_CHECKPOINT (and --map if needed)")

    def base_of(lin: nn.Linear) -> torch.Tensor:
        w = lookup(names[id(lin.weight)])
        if w is None:
            raise VlapruneError(f"the base VLM has no tensor for {names[id(lin.weight)]}; check --map")
        if tuple(w.shape) != tuple(lin.weight.shape):
            raise VlapruneError(
                f"the base VLM's {names[id(lin.weight)]} has shape {tuple(w.shape)}, the VLA's "
                f"{tuple(lin.weight.shape)}: dW needs the unpruned model (score before any cut)"
            )
        return w.to(torch.float32)

    return base_of


def bias_compensation(layout, units: dict, stats: Stats, modules: list[tuple[str, str]]) -> dict:
    """FLAP's bias compensation for the (stack, kind) `modules` of a unit plan: for each block, the removed
    units' mean contribution to the output projection, delta = W[:, removed] @ E[X_removed] (out_features,),
    keyed (stack, block, path of the output projection). Marks those paths under "bias" in `units` (the
    surgery gives them a bias); add the deltas to the biases after the cut. Call before the cut."""
    out = {}
    for stack, kind in modules:
        for i, spec in units.get(stack, {}).items():
            block = layout.stacks[stack].blocks[int(i)]
            if kind == "mlp" and "ffn" in spec:
                mlp, _, down = ffn_parts(block)
                lin, path, size, keep = getattr(mlp, down), f"mlp.{down}", 1, spec["ffn"]
            elif kind == "attn" and "q" in spec:
                p = attn_parts(block)
                lin, path = getattr(p["attn"], p["o"]), f"{p['path']}.{p['o']}"
                size, keep = p["head_dim"], spec["q"]
            else:
                continue
            n = lin.in_features // size
            gone = [u * size + r for u in sorted(set(range(n)) - set(keep)) for r in range(size)]
            w = lin.weight.detach().float()
            out[(stack, int(i), path)] = w[:, gone] @ flap_means(stats, lin)[gone]
            spec.setdefault("bias", []).append(path)
    return out
