"""Multi-module unit pruning without recovery, and `vlaprune prune-units`.

    vlaprune prune-units --policy.path=... --dataset.root=... --criterion=dw_prune_high --base=VLM \
        --ratios=language.mlp=0.3,language.attn=0.1,vision.mlp=0.2 --compare=magnitude,wanda --output_dir=out
    vlaprune prune-units ... --budget=0.2      # search per-module ratios that remove 20% of the parameters

Ratios are per stack and unit kind (`mlp`: FFN channels, `attn`: attention heads), applied uniformly to
every block of the stack (the lowest-scoring units of each block go). `--budget` searches the ratios
greedily in steps of 0.1: each step raises the ratio of the module whose step costs the least calibration
loss per parameter removed, until the budget is met (the cheap offline proxy; check the result closed-loop
with `vlaprune eval`). No fine-tuning follows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters import layout as find_layout
from vlaprune.adapters.load import load_model
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.cost import unique_params
from vlaprune.scoring.calibration import DatasetConfig, calibration_batches, policy_loss
from vlaprune.scoring.probe import Probe
from vlaprune.scoring.units import CRITERIA, unit_scores
from vlaprune.surgery.plan import Plan
from vlaprune.surgery.units import apply_units, sizes

KINDS = {"mlp": {"ffn"}, "attn": {"q", "kv"}}


def parse_ratios(spec: str, stacks: dict) -> dict[tuple[str, str], float]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, eq, val = item.partition("=")
        name, _, kind = key.strip().rpartition(".")
        if not eq or kind not in KINDS or not name:
            raise VlapruneError(
                f"--ratios item {item!r} is not STACK.mlp=R or STACK.attn=R (e.g. language.mlp=0.3)"
            )
        if name not in stacks:
            raise VlapruneError(f"--ratios: no stack {name!r} (stacks: {', '.join(stacks)})")
        try:
            r = float(val)
        except ValueError:
            raise VlapruneError(f"--ratios {key}={val!r}: not a number") from None
        if not 0 <= r < 1:
            raise VlapruneError(f"--ratios {key}={r}: a ratio must be in [0, 1)")
        out[(name, kind)] = r
    return out


def select(scores: dict, ratios: dict[tuple[str, str], float], heads: str = "groups") -> dict:
    """Units to keep per block: the highest-scoring (1 - ratio) of each kind, in original order."""
    units: dict[str, dict[str, dict[str, list[int]]]] = {}
    for stack, blocks in scores.items():
        for i, sc in enumerate(blocks):
            spec: dict[str, list[int]] = {}
            r = ratios.get((stack, "mlp"), 0.0)
            if r > 0:
                spec["ffn"] = _top(sc["ffn"], round(r * len(sc["ffn"])), f"{stack} block {i} FFN channels")
            r = ratios.get((stack, "attn"), 0.0)
            if r > 0:
                spec |= _heads(sc["q"], sc["kv"], r, heads, f"{stack} block {i}")
            if spec:
                units.setdefault(stack, {})[str(i)] = spec
    return units


def _top(score: torch.Tensor, remove: int, what: str) -> list[int]:
    n = len(score)
    if remove >= n:
        raise VlapruneError(f"the ratio removes all {n} {what}; use a smaller ratio")
    keep = torch.argsort(score, descending=True, stable=True)[: n - remove]
    return sorted(int(i) for i in keep)


def _heads(q: torch.Tensor, kv: torch.Tensor, r: float, mode: str, where: str) -> dict[str, list[int]]:
    n_q, n_kv = len(q), len(kv)
    g = n_q // n_kv
    if mode == "groups" or g == 1:
        group_score = q.reshape(n_kv, g).sum(1) + kv
        kv_keep = _top(group_score, round(r * n_kv), f"{where} KV groups")
        return {"q": [k * g + j for k in kv_keep for j in range(g)], "kv": kv_keep}
    if mode != "query":
        raise VlapruneError(f"--heads={mode!r}; choose groups or query")
    q_keep = []
    for k in range(n_kv):
        q_keep += [
            k * g + j for j in _top(q[k * g : (k + 1) * g], round(r * g), f"{where} query heads of a group")
        ]
    return {"q": q_keep, "kv": list(range(n_kv))}


def prune_units(model: nn.Module, units: dict, stacks: str | None = None) -> Plan:
    """Apply a unit plan to `model` in place and return its Plan (records per-layer sizes)."""
    from vlaprune.surgery.checkpoint import remember_base

    lay = find_layout(model, stacks)
    remember_base(model, stacks=stacks)
    before = unique_params(model)
    apply_units(lay, units)
    plan = Plan(
        family=lay.family,
        model_class=type(model).__name__,
        drops={},
        requested={},
        coupled={},
        blocks_before={n: len(s) for n, s in lay.stacks.items()},
        blocks_after={n: len(s) for n, s in lay.stacks.items()},
        params_before=before,
        params_after=unique_params(model),
        kind="units",
        units=units,
        extra={"sizes": sizes(lay, list(units))},
    )
    model.vlaprune_plans = list(getattr(model, "vlaprune_plans", [])) + [plan]
    return plan


def search(model, scores, candidates, budget: float, loss_of, heads: str) -> dict[tuple[str, str], float]:
    """Greedy per-module ratios (steps of 0.1) until `budget` of the parameters are removed."""
    total = unique_params(model)
    ratios = {c: 0.0 for c in candidates}

    def trial(rs):
        m = copy.deepcopy(model)
        units = select(scores, {k: v for k, v in rs.items() if v > 0}, heads)
        apply_units(find_layout(m), units)
        return loss_of(m), total - unique_params(m)

    current_loss, removed = loss_of(model), 0
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
class PruneUnitsConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    stacks: str = ""
    criterion: str = "wanda"
    compare: str = ""
    ratios: str = ""
    budget: float = 0.0
    # Attention heads under grouped-query attention: remove whole KV groups, or query heads inside groups.
    heads: str = "groups"
    # Base VLM for the dW criteria, and the VLA -> VLM name mapping (see `vlaprune diverge`).
    base: str = ""
    map: str = "auto"
    batches: int = 4
    batch_size: int = 8
    seed: int = 0
    output_dir: str = ""

    def __post_init__(self) -> None:
        for c in self.criteria():
            if c not in CRITERIA:
                raise VlapruneError(f"unknown criterion {c!r}; choose from {', '.join(CRITERIA)}")
        if not self.output_dir:
            raise VlapruneError("--output_dir is required")
        if bool(self.ratios) == bool(self.budget):
            raise VlapruneError(
                "give either --ratios=STACK.mlp=R,... or --budget=FRACTION (not both, not neither)"
            )
        if self.budget and not 0 < self.budget < 1:
            raise VlapruneError(f"--budget={self.budget}: a fraction of the parameters in (0, 1)")
        if self.heads not in ("groups", "query"):
            raise VlapruneError(f"--heads={self.heads!r}; choose groups or query")

    def criteria(self) -> list[str]:
        return list(
            dict.fromkeys([self.criterion, *(c.strip() for c in self.compare.split(",") if c.strip())])
        )


def _dw_lookup(cfg: PruneUnitsConfig, model: nn.Module):
    if not cfg.base:
        return None
    from vlaprune.scoring.diverge import _resolve
    from vlaprune.scoring.divergence import choose_rules, map_name, parse_map
    from vlaprune.scoring.tensors import TensorSource

    src = TensorSource(_resolve(cfg.base))
    names = set(src.names())
    rules = parse_map(cfg.map)
    if rules is None:
        _, rules = choose_rules([n for n, _ in model.named_parameters()], names)

    def lookup(name: str):
        b = map_name(name, rules)
        return src.tensor(b) if b in names else None

    return lookup


def run(cfg: PruneUnitsConfig) -> dict[str, Any]:
    """Score units with every criterion, prune at the same ratios, measure the recovery-free loss change."""
    from rich.console import Console
    from rich.table import Table

    from vlaprune.surgery.checkpoint import remember_base, save_pruned

    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        raise VlapruneError(f"{out} already exists and is not empty; choose a new --output_dir")
    model = load_model(cfg.policy.path, cfg.policy.trust_remote_code)
    remember_base(model, source=cfg.policy.path, stacks=cfg.stacks or None)
    lay = find_layout(model, cfg.stacks or None)
    ratios = parse_ratios(cfg.ratios, lay.stacks) if cfg.ratios else {}
    if not hasattr(getattr(model, "config", None), "input_features"):
        raise VlapruneError("prune-units evaluates lerobot policies (the recovery-free action loss)")
    path = cfg.policy.path if Path(cfg.policy.path).is_dir() else None
    batches = calibration_batches(model, cfg.dataset, cfg.batches, cfg.batch_size, cfg.seed, path)

    def loss_of(m):
        fn = policy_loss(m, cfg.seed)
        with torch.no_grad():
            return sum(float(fn(i, b)) for i, b in enumerate(batches)) / len(batches)

    candidates = list(ratios) or [
        (s, k) for s in lay.stacks for k in ("mlp", "attn") if k == "mlp" or s not in _coupled(lay)
    ]
    kinds: dict[str, set[str]] = {}
    for s, k in candidates:
        kinds.setdefault(s, set()).update(KINDS[k])
    lookup = _dw_lookup(cfg, model)
    base_loss, total = loss_of(model), unique_params(model)
    rows, pruned_main, plan_main = [], None, None
    console = Console(width=max(Console().width, 100))
    for crit in cfg.criteria():
        m = copy.deepcopy(model)
        mlay = find_layout(m, cfg.stacks or None)
        probe = Probe(mlay, sorted(kinds), batches, policy_loss(m, cfg.seed), cfg.seed)
        scores = unit_scores(probe, crit, kinds, dw_lookup=lookup)
        used = ratios or search(m, scores, candidates, cfg.budget, loss_of, cfg.heads)
        plan = prune_units(m, select(scores, used, cfg.heads), cfg.stacks or None)
        loss = loss_of(m)
        rows.append(
            {
                "criterion": crit,
                "ratios": {f"{s}.{k}": r for (s, k), r in used.items()},
                "params": plan.params_after,
                "params_removed_pct": 100 * (1 - plan.params_after / total),
                "loss_before": base_loss,
                "loss_after": loss,
                "loss_change": loss - base_loss,
            }
        )
        console.print(
            f"{crit}: {rows[-1]['params_removed_pct']:.1f}% params removed, "
            f"loss {base_loss:.4f} -> {loss:.4f}",
        )
        if crit == cfg.criterion:
            pruned_main, plan_main = m, plan
    t = Table(
        title="recovery-free unit pruning (same ratios per criterion unless searched)", title_justify="left"
    )
    for c in ("criterion", "ratios", "params removed", "loss before", "loss after", "change"):
        t.add_column(c, justify="left" if c in ("criterion", "ratios") else "right")
    for r in rows:
        t.add_row(
            r["criterion"],
            ", ".join(f"{k}={v:.2f}" for k, v in r["ratios"].items()),
            f"{r['params_removed_pct']:.1f}%",
            f"{r['loss_before']:.4f}",
            f"{r['loss_after']:.4f}",
            f"{r['loss_change']:+.4f}",
        )
    console.print(t)
    from vlaprune.evaluate.report_cost import cost

    report = {
        "rows": rows,
        "cost_original": cost(lay, 5, 1),
        "cost_pruned": cost(find_layout(pruned_main), 5, 1),
    }
    save_pruned(
        pruned_main,
        plan_main,
        out,
        processors_from=path,
        stacks=cfg.stacks or None,
        extra_json={"prune.json": report},
    )
    lat0, lat1 = (
        report["cost_original"]["latency"]["median_ms"],
        report["cost_pruned"]["latency"]["median_ms"],
    )
    console.print(f"{cfg.criterion}: select_action {lat0:.1f} -> {lat1:.1f} ms; wrote {out}")
    return report


def _coupled(lay) -> set[str]:
    from vlaprune.surgery.units import coupled_stacks

    return coupled_stacks(lay)
