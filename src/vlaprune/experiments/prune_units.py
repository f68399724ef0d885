"""Multi-module unit pruning without recovery, and `vlaprune prune-units`.

    vlaprune prune-units --policy.path=... --dataset.root=... --criterion=dw_prune_high --base=VLM \
        --ratios=language.mlp=0.3,language.attn=0.1,vision.mlp=0.2 --compare=magnitude,wanda --output_dir=out
    vlaprune prune-units ... --budget=0.2      # search per-module ratios that remove 20% of the parameters
    vlaprune prune-units ... --env.type=metaworld --env.task=reach-v3 --eval.n_episodes=20   # + success

Ratios are per stack and unit kind (`mlp`: FFN channels, `attn`: attention heads), applied uniformly to
every block of the stack (the lowest-scoring units of each block go). Scores are calibrated on the
training episodes; every model (the original and each criterion's pruned one) is then judged on the
held-out episodes (`--holdout`, the last 20% of each task's): the policy's loss and its action L1, plus
closed-loop success with a Wilson 95% interval when `--env.type` is given, next to parameters and
`select_action` latency. `--budget` searches the ratios greedily in steps of 0.1: each step raises the
ratio of the module whose step costs the least held-out loss per parameter removed, until the budget is
met (the cheap offline proxy; the closed-loop success is the final check). No fine-tuning follows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.counting import unique_params
from vlaprune.configs import DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.data import Data, action_error, policy_loss
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.closed_loop import wilson
from vlaprune.evaluate.cost import cost, inference_call, latency
from vlaprune.evaluate.paired import compare, pair_episodes, verdict
from vlaprune.evaluate.run import closed_loop, task_instructions
from vlaprune.policy import Loaded, load_policy
from vlaprune.scoring.probe import Probe
from vlaprune.scoring.units import CRITERIA, unit_scores
from vlaprune.surgery.ratios import KINDS, parse_ratios, select
from vlaprune.surgery.units import coupled_stacks


@dataclass
class PruneUnitsConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Optional closed-loop success of the original and every pruned model (see `vlaprune eval`).
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EpisodesConfig = field(default_factory=EpisodesConfig)
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
    # Fraction of each task's episodes held out for testing (the last ones): the reported loss / action
    # error are measured on these, scoring calibrates on the training episodes. 0: everything is reported
    # on the calibration batches. With --budget the search picks ratios by the loss on the `validation`
    # fraction before the test episodes (0: on the calibration batches), never on the test episodes.
    holdout: float = 0.2
    validation: float = 0.2
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
        if not 0 <= self.holdout < 1:
            raise VlapruneError(f"--holdout={self.holdout}: a fraction of the episodes in [0, 1)")
        if not 0 <= self.validation < 1:
            raise VlapruneError(f"--validation={self.validation}: a fraction of the episodes in [0, 1)")
        if self.env.type:
            task_instructions(self.env)  # validates the task names now, before any work

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


class Judge:
    """Measures one model the same way every time: loss and action L1 on fixed test batches, `select_action`
    latency, and, with --env.type, closed-loop success with its Wilson interval and per-episode records
    (for paired comparisons). The dataset is opened once (`data`) and split per task into train (scoring
    calibrates on it), validation (the --budget search selects on it) and test (reported)."""

    def __init__(self, cfg: PruneUnitsConfig, data: Data, policy: Loaded | None = None):
        self.cfg = cfg
        parts = data.splits(cfg.holdout, cfg.validation if cfg.budget else 0.0)
        self.parts = parts
        self.held_out = bool(parts.test)
        if policy is not None and parts.test:
            data.check_held_out(policy.record.trained_on, parts.test, "the held-out")
        self.calibration = data.batches(cfg.batches, cfg.batch_size, cfg.seed, parts.train)
        self.batches = (
            data.batches(cfg.batches, cfg.batch_size, cfg.seed, parts.test)
            if parts.test
            else self.calibration
        )
        self.selection = (
            data.batches(cfg.batches, cfg.batch_size, cfg.seed, parts.validation)
            if parts.validation
            else self.calibration
        )
        self.episodes = parts.test or parts.train
        self.pre_post = data.processors() if cfg.env.type else None

    def loss(self, m: nn.Module, batches: list[dict] | None = None) -> float:
        """Mean loss on `batches` (default: the test batches)."""
        batches = batches or self.batches
        fn = policy_loss(m, self.cfg.seed)
        with torch.no_grad():
            return sum(float(fn(i, b)) for i, b in enumerate(batches)) / len(batches)

    def selection_loss(self, m: nn.Module) -> float:
        """The loss the --budget search minimizes: validation batches (or calibration), never test."""
        return self.loss(m, self.selection)

    def __call__(self, m: Loaded, progress=None) -> dict[str, Any]:
        abs_sum, steps = 0.0, 0
        for i, b in enumerate(self.batches):
            err = action_error(m.module, b, i, self.cfg.seed)
            abs_sum, steps = abs_sum + float(err[0].sum()), steps + err[2]
        out = {
            "loss": self.loss(m.module),
            "l1": abs_sum / max(1, steps * self.batches[0]["action"].shape[-1]),
            "latency_ms": latency(inference_call(m.layout()), 10, 2)["median_ms"],
        }
        if self.pre_post:
            res = closed_loop(m.module, *self.pre_post, self.cfg.env, self.cfg.eval, progress=progress)[
                "normal"
            ]
            k = sum(t["successes"] for t in res["tasks"].values())
            n = sum(t["episodes"] for t in res["tasks"].values())
            out |= {
                "success": res["mean_success"],
                "success_ci95": list(wilson(k, n)),
                "success_tasks": {
                    t: {
                        key: v[key]
                        for key in ("success_rate", "successes", "episodes", "ci95", "episodes_detail")
                    }
                    for t, v in res["tasks"].items()
                },
            }
        return out


def run(cfg: PruneUnitsConfig) -> dict[str, Any]:
    """Score units with every criterion, prune (same ratios, or each searched under --budget), and judge
    each pruned model without recovery against the original: held-out loss / action error, closed-loop
    success (with --env.type), parameters and latency."""
    from rich.console import Console
    from tqdm.auto import tqdm

    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        raise VlapruneError(f"{out} already exists and is not empty; choose a new --output_dir")
    policy = load_policy(cfg.policy, cfg.stacks or None)
    lay = policy.layout()
    ratios = parse_ratios(cfg.ratios, lay.stacks) if cfg.ratios else {}
    if not policy.is_lerobot:
        raise VlapruneError("prune-units evaluates lerobot policies (the recovery-free action loss)")
    n_tasks = len(task_instructions(cfg.env)) if cfg.env.type else 0
    judge = Judge(cfg, Data(policy, cfg.dataset), policy)
    coupled = coupled_stacks(lay)
    candidates = list(ratios) or [
        (s, k) for s in lay.stacks for k in ("mlp", "attn") if k == "mlp" or s not in coupled
    ]
    kinds: dict[str, set[str]] = {}
    for s, k in candidates:
        kinds.setdefault(s, set()).update(KINDS[k])
    lookup = _dw_lookup(cfg, policy.module)
    console = Console(width=max(Console().width, 100))
    episodes = n_tasks * cfg.eval.n_episodes * (1 + len(cfg.criteria()))
    bar = tqdm(total=episodes, desc="closed-loop episodes", disable=not episodes)
    original = {"criterion": "unpruned", "params": unique_params(policy.module), **judge(policy, bar.update)}
    total = original["params"]
    rows, pruned_main = [], None
    for crit in cfg.criteria():
        m = policy.copy()
        probe = Probe(m.layout(), sorted(kinds), judge.calibration, policy_loss(m.module, cfg.seed), cfg.seed)
        scores = unit_scores(probe, crit, kinds, dw_lookup=lookup)
        used = ratios or search(m, scores, candidates, cfg.budget, judge.selection_loss, cfg.heads)
        plan = m.prune_units(select(scores, used, cfg.heads))
        row = {
            "criterion": crit,
            "ratios": {f"{s}.{k}": r for (s, k), r in used.items()},
            "params": plan.params_after,
            "params_removed_pct": 100 * (1 - plan.params_after / total),
            **judge(m, bar.update),
        }
        row |= {"loss_before": original["loss"], "loss_change": row["loss"] - original["loss"]}
        if "success" in row:
            row["success_change"] = row["success"] - original["success"]
            row["success_paired"] = paired(original, row)
        rows.append(row)
        console.print(
            f"{crit}: {row['params_removed_pct']:.1f}% params removed ("
            + ", ".join(f"{k}={v:.2f}" for k, v in row["ratios"].items())
            + f"), loss {original['loss']:.4f} -> {row['loss']:.4f}"
            + (f", success {row['success']:.2f}" if "success" in row else "")
        )
        if crit == cfg.criterion:
            pruned_main = m
    bar.close()
    console.print(table(original, rows, judge.held_out))
    report = {
        "original": original,
        "rows": rows,
        "judged_on": {
            "episodes": judge.episodes,
            "held_out": judge.held_out,
            "splits": dataclasses.asdict(judge.parts),
            "budget_search_on": "validation" if judge.parts.validation else "calibration (train)",
            "batches": cfg.batches,
            "batch_size": cfg.batch_size,
            "closed_loop": dataclasses.asdict(cfg.env) | dataclasses.asdict(cfg.eval)
            if cfg.env.type
            else None,
        },
        "cost_original": cost(lay, 5, 1),
        "cost_pruned": cost(pruned_main.layout(), 5, 1),
    }
    pruned_main.save(out, extra_json={"prune.json": report})
    lat0, lat1 = (
        report["cost_original"]["latency"]["median_ms"],
        report["cost_pruned"]["latency"]["median_ms"],
    )
    console.print(f"{cfg.criterion}: select_action {lat0:.1f} -> {lat1:.1f} ms; wrote {out}")
    return report


def search(
    policy: Loaded, scores, candidates, budget: float, loss_of, heads: str
) -> dict[tuple[str, str], float]:
    """Greedy per-module ratios (steps of 0.1) until `budget` of the parameters are removed: each step raises
    the ratio of the module whose step costs the least `loss_of` per parameter removed."""
    total = unique_params(policy.module)
    ratios = {c: 0.0 for c in candidates}

    def trial(rs):
        m = policy.copy()
        m.prune_units(select(scores, {k: v for k, v in rs.items() if v > 0}, heads))
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


def table(original: dict[str, Any], rows: list[dict[str, Any]], held_out: bool):
    from rich.table import Table

    where = "held-out episodes" if held_out else "calibration batches"
    t = Table(title=f"recovery-free unit pruning (loss and action L1 on {where})", title_justify="left")
    cols = ["criterion", "params cut", "loss", "change", "action L1", "latency ms"]
    if "success" in original:
        cols += ["success [95% CI]", "paired change [95% CI]", "verdict"]
    for c in cols:
        t.add_column(c, justify="left" if c == "criterion" else "right", no_wrap=True)
    for r in [original, *rows]:
        cells = [
            r["criterion"],
            f"{r.get('params_removed_pct', 0.0):.1f}%",
            f"{r['loss']:.4f}",
            f"{r['loss'] - original['loss']:+.4f}",
            f"{r['l1']:.4f}",
            f"{r['latency_ms']:.1f}",
        ]
        if "success" in original:
            lo, hi = r["success_ci95"]
            p = r.get("success_paired")
            cells += [
                f"{r['success']:.2f} [{lo:.2f},{hi:.2f}]",
                f"{p['difference']:+.2f} [{p['ci_low']:+.2f},{p['ci_high']:+.2f}]" if p else "-",
                p["verdict"] if p else "-",
            ]
        t.add_row(*cells)
    return t


def paired(original: dict[str, Any], row: dict[str, Any], tol: float = 0.05) -> dict[str, Any]:
    """The pruned model's closed-loop success against the original's, episode by episode (same task, same
    seed): difference, Newcombe 95% interval, McNemar p and the verdict at `tol` (evaluate/paired.py)."""
    pairs = pair_episodes(
        {t: v["episodes_detail"] for t, v in original["success_tasks"].items()},
        {t: v["episodes_detail"] for t, v in row["success_tasks"].items()},
    )
    result = compare(*pairs)
    return {**result, "verdict": verdict(result, tol)}
