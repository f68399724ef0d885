"""One arm of `vlaprune prune-units` (experiments/prune_units.py): score a module set's units with its
criteria (or search per-module ratios under --budget), choose the units to keep, cut them from a copy of the
policy and judge it against the unpruned model. Scores are per unit, higher = keep (direction high flips a
criterion). `Setup` is what every arm shares; its `cfg` is the run's `PruneUnitsConfig` (not imported here:
prune_units imports this module).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vlaprune.adapters.counting import unique_params
from vlaprune.data import Data, policy_loss
from vlaprune.errors import VlapruneError
from vlaprune.experiments.judge import Judge, paired
from vlaprune.experiments.rounds import units_in_rounds
from vlaprune.policy import Loaded
from vlaprune.scoring.probe import Probe
from vlaprune.scoring.units import LEGACY, bias_compensation, input_stats, unit_scores
from vlaprune.surgery.ratios import KINDS, Module, accounting, select, shortfall
from vlaprune.surgery.spec import label


def arm(s: Setup, name: str, mods: list[Module], original: dict, progress, *, first: bool):
    """(row, pruned model) of one arm: score its modules (or search their ratios under --budget), choose the
    units, cut them and judge the result against `original`. A compared criterion that cannot meet the same
    modules (e.g. zero scores empty a block) gives an error row and no model; the first arm raises."""
    cfg = s.cfg
    m = s.policy.copy()
    scores, mods, stats = _scored(s, m, name, mods)
    labels = [label(x) for x in mods]  # as asked; dead blocks are protected on top (said above)
    mods = [_skip_dead(x, s.dead) for x in mods]
    try:
        units, acc = _units(cfg, scores, mods)
    except VlapruneError as e:
        if first:  # the main criterion's own plan is bad input
            raise
        s.console.print(f"{name}: not run: {e}")
        return {"criterion": name, "spec": [label(x) for x in mods], "error": str(e)}, None
    flap = [x.key for x in mods if x.criterion == "flap"] if cfg.flap_bias else []
    deltas = bias_compensation(m.layout(), units, stats, flap) if flap else {}
    plan = m.prune_units(units, cfg.removal, labels)
    plan.asked = acc
    for line in shortfall(acc):
        s.console.print(f"{name}: fewer units than asked: {line}")
    _add_biases(m, deltas)
    row = {
        "criterion": name,
        "spec": plan.spec,
        "removal": cfg.removal,
        "ratios": {f"{x.stack}.{x.kind}": x.ratio for x in mods},
        "units_removed": removed_units(units, scores),
        "modules": acc,
        "params": plan.params_after,
        "params_removed_pct": 100 * (1 - plan.params_after / original["params"]),
        **(_zeroed(s.policy, m, scores, acc) if cfg.removal == "masked" else {}),
        **s.judge(m, progress),
    }
    _compare(s, original, m, row)
    s.console.print(_line(cfg, name, original, row, acc))
    return row, m


def _scored(s: Setup, m: Loaded, name: str, mods: list[Module]):
    """(unit scores, modules, input statistics) of one arm on its copy `m`: the modules' own criteria, or
    under --budget the arm's criterion with the ratios searched greedily."""
    cfg = s.cfg
    probe = Probe(m.layout(), sorted(s.kinds), s.judge.calibration, policy_loss(m.module, cfg.seed), cfg.seed)
    crits = {x.criterion for x in mods} or {LEGACY.get(name, (name,))[0]}
    stats = input_stats(probe, s.kinds) if crits & {"wanda", "flap"} else None
    if mods:
        return score_modules(probe, mods, s.lookup, stats), mods, stats
    crit, direction = LEGACY.get(name, (name, "low"))
    scores = unit_scores(probe, crit, s.kinds, dw_lookup=s.lookup, direction=direction, stats=stats)
    used = search(m, scores, s.candidates, cfg.budget, s.judge.selection_loss, cfg.heads, dead=s.dead)
    return scores, [Module(st, k, r, crit, direction) for (st, k), r in used.items()], stats


def _units(cfg: Any, scores: dict, mods: list[Module]) -> tuple[dict, dict]:
    """(units to keep, per-module accounting) for `mods`; a module that removes nothing is an error unless
    --allow_empty."""
    units = select(scores, mods, cfg.heads)
    acc = accounting(scores, mods, units)
    empty = [n for n, a in acc.items() if a["ratio"] > 0 and a["removed"] == 0]
    if empty and not cfg.allow_empty:
        a = acc[empty[0]]
        raise VlapruneError(
            f"{empty[0]}={a['ratio']:g} removes no {a['unit']} (asked {a['asked']:g} of "
            f"{a['possible']} possible; each block rounds its share to 0): raise the ratio, use "
            "the global scope, or pass --allow_empty=true"
        )
    return units, acc


def _compare(s: Setup, original: dict, pruned: Loaded, row: dict) -> None:
    """Add the loss change and, with closed-loop success, the paired verdict against the original (in
    rounds until decided under --eval.sequential: experiments/rounds.py) to `row`."""
    row |= {"loss_before": original["loss"], "loss_change": row["loss"] - original["loss"]}
    if "success" not in row:
        return
    if s.cfg.eval.sequential:
        s.base_episodes = units_in_rounds(s.judge, s.policy, pruned, row, s.base_episodes)
    else:
        row["success_paired"] = paired(original, row)
    row["success_change"] = row["success"] - original["success"]


def _line(cfg: Any, name: str, original: dict, row: dict, acc: dict) -> str:
    cut = f"{row['params_removed_pct']:.1f}% of the parameters removed"
    if cfg.removal == "masked":
        units = ", ".join(f"{k} {v:.1f}%" for k, v in row["units_zeroed_pct"].items())
        cut = (
            f"masked: units zeroed in place ({units} of its units; {row['params_zeroed_pct']:.1f}% of the "
            "parameters zeroed), no parameters removed"
        )
    return (
        f"{name}: {cut} ("
        + ", ".join(f"{k}: {a['removed']} of {a['asked']:g} asked" for k, a in acc.items())
        + f"), loss {original['loss']:.4f} -> {row['loss']:.4f}"
        + (f", success {row['success']:.2f}" if "success" in row else "")
    )


def _zeroed(original: Loaded, masked: Loaded, scores: dict, acc: dict) -> dict[str, Any]:
    """What masking zeroed: per module the fraction of its units (FFN channels / query heads, of every block,
    protected ones included), and the parameters that are zero in `masked` but not in `original` (shapes are
    kept, so names align), as a count and a fraction of all parameters."""
    units = {}
    for name, a in acc.items():
        stack, kind = name.rsplit(".", 1)
        total = sum(len(b.get("ffn" if kind == "mlp" else "q", ())) for b in scores[stack])
        units[name] = 100 * a["removed"] / total if total else 0.0
    before = dict(original.module.named_parameters())
    with torch.no_grad():
        n = sum(
            int(((p == 0) & (before[k] != 0)).sum())
            for k, p in masked.module.named_parameters()
            if k in before
        )
    total = unique_params(original.module)
    return {"units_zeroed_pct": units, "params_zeroed": n, "params_zeroed_pct": 100 * n / total}


def _skip_dead(m: Module, dead: dict[str, list[int]]) -> Module:
    """`m` with the dead blocks of its stack protected, so no criterion ranks dead units as free to cut."""
    extra = set(dead.get(m.stack, [])) - set(m.protect)
    return dataclasses.replace(m, protect=tuple(sorted(set(m.protect) | extra))) if extra else m


def score_modules(probe: Probe, modules: list[Module], lookup, stats) -> dict[str, list[dict]]:
    """Unit scores per stack and block, each module scored by its own criterion and direction."""
    out: dict[str, list[dict]] = {}
    groups: dict[tuple[str, str], list[Module]] = {}
    for x in modules:
        groups.setdefault((x.criterion, x.direction), []).append(x)
    for (crit, direction), mods in groups.items():
        kinds: dict[str, set[str]] = {}
        for x in mods:
            kinds.setdefault(x.stack, set()).update(KINDS[x.kind])
        sc = unit_scores(probe, crit, kinds, dw_lookup=lookup, direction=direction, stats=stats)
        for x in mods:
            blocks = out.setdefault(x.stack, [{} for _ in sc[x.stack]])
            for mine, theirs in zip(blocks, sc[x.stack]):
                mine |= {k: v for k, v in theirs.items() if k in KINDS[x.kind]}
    return out


def removed_units(units: dict, scores: dict) -> dict[str, int]:
    """How many FFN channels / query heads each stack loses under `units`."""
    out: dict[str, int] = {}
    for stack, blocks in units.items():
        for i, spec in blocks.items():
            for kind, what in (("ffn", "mlp"), ("q", "attn")):
                if kind in spec:
                    n = len(scores[stack][int(i)][kind])
                    out[f"{stack}.{what}"] = out.get(f"{stack}.{what}", 0) + n - len(spec[kind])
    return out


def _add_biases(policy: Loaded, deltas: dict) -> None:
    """Add FLAP's compensation (computed before the cut) to the biases the plan created."""
    lay = policy.layout()
    with torch.no_grad():
        for (stack, i, path), delta in deltas.items():
            lin = lay.stacks[stack].blocks[i].get_submodule(path)
            lin.bias += delta.to(lin.bias.dtype)


def search(
    policy: Loaded, scores, candidates, budget: float, loss_of, heads: str, *, dead: dict | None = None
) -> dict[tuple[str, str], float]:
    """Greedy per-module ratios (steps of 0.1) until `budget` of the parameters are removed: each step raises
    the ratio of the module whose step costs the least `loss_of` per parameter removed (dead blocks, by
    stack, are never ranked)."""
    dead = dead or {}
    total = unique_params(policy.module)
    ratios = {c: 0.0 for c in candidates}

    def trial(rs):
        m = policy.copy()
        mods = [_skip_dead(Module(s, k, r), dead) for (s, k), r in rs.items() if r > 0]
        m.prune_units(select(scores, mods, heads))
        return loss_of(m.module), total - unique_params(m.module)

    current_loss, removed = loss_of(policy.module), 0
    while removed < budget * total:
        best = None
        for c in candidates:
            if ratios[c] + 0.1 >= 0.95:
                continue
            rs = {**ratios, c: round(ratios[c] + 0.1, 2)}
            try:
                loss, rem = trial(rs)
            except VlapruneError:
                continue
            gain = rem - removed
            if gain <= 0:
                continue
            cost = (loss - current_loss) / gain
            if best is None or cost < best[0]:
                best = (cost, rs, loss, rem)
        if best is None:
            raise VlapruneError(f"cannot reach --budget={budget}: every module is at its largest ratio")
        _, ratios, current_loss, removed = best
    return {k: v for k, v in ratios.items() if v > 0}


@dataclass
class Setup:
    """What every arm of a prune-units run shares: the policy (never cut: each arm cuts a copy) and its data,
    the judge, the modules asked for (--spec) or their ratios (--ratios), the modules a --budget search may
    raise, the unit kinds scored per stack, the dW lookup (--base) and the dead blocks per stack.
    `base_episodes`: the unpruned model's closed-loop episodes so far (sequential comparisons extend it)."""

    cfg: Any
    policy: Loaded
    data: Data
    judge: Judge
    modules: list[Module]
    ratios: dict
    candidates: list[tuple[str, str]]
    kinds: dict[str, set[str]]
    lookup: Callable | None
    dead: dict[str, list[int]]
    console: Any
    base_episodes: dict = field(default_factory=dict)
