r"""`vlaprune prune-units`: prune FFN channels / attention heads across modules with no recovery, and judge
every criterion the same way.

    vlaprune prune-units --policy.path=... --dataset.root=... --criterion=dw_prune_high --base=VLM \
        --ratios=language.mlp=0.3,language.attn=0.1,vision.mlp=0.2 --compare=magnitude,wanda --output_dir=out
    vlaprune prune-units ... --budget=0.2      # search per-module ratios that remove 20% of the parameters
    vlaprune prune-units ... --env.type=metaworld --env.task=reach-v3 --eval.n_episodes=20   # + success
    vlaprune prune-units ... --base=VLM --spec="language.mlp=dw_pi05:high:0.2:global:protect=0-1 \
        vision.mlp=dw_pi05:low:0.1:global" --compare=magnitude,wanda,flap --removal=masked

Ratios are per stack and unit kind (`mlp`: FFN channels, `attn`: attention heads), applied uniformly to
every block of the stack (the lowest-scoring units of each block go). Scores are calibrated on the
training episodes; every model (the original and each criterion's pruned one) is then judged on the
held-out episodes (`--holdout`, the last 20% of each task's): the policy's loss and its action L1, plus
closed-loop success with a Wilson 95% interval when `--env.type` is given, next to parameters and
`select_action` latency. `--budget` searches the ratios greedily in steps of 0.1: each step raises the
ratio of the module whose step costs the least held-out loss per parameter removed, until the budget is
met (the cheap offline proxy; the closed-loop success is the final check). No fine-tuning follows.

`--spec` names every module with its own criterion, direction, ratio, scope and protected blocks (grammar in
`vlaprune.surgery.spec`; the divergence paper's public-code recipes are specs); `--compare` then runs each
baseline criterion on the same modules, ratios, scopes and protected blocks (direction low). `--removal`:
`real` shrinks the layers, `masked` zeroes the same units in place (no parameter / FLOP saving, reported as
such). `--flap_bias` adds FLAP's bias compensation to the modules scored by `flap`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters import closed_loop_policy
from vlaprune.adapters.counting import unique_params
from vlaprune.configs import HOLDOUT, DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.data import Data, policy_loss
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.cost import cost
from vlaprune.evaluate.run import task_instructions
from vlaprune.experiments.judge import Judge, paired, table
from vlaprune.experiments.rounds import units_in_rounds
from vlaprune.policy import Loaded, load_policy
from vlaprune.scoring.probe import Probe
from vlaprune.scoring.units import CRITERIA, LEGACY, bias_compensation, input_stats, unit_scores
from vlaprune.surgery.dead import dead_blocks
from vlaprune.surgery.ratios import KINDS, Module, accounting, parse_ratios, select, shortfall
from vlaprune.surgery.spec import label, parse_spec
from vlaprune.surgery.units import coupled_stacks

DW = ("dw", "dw_openvla", "dw_pi05", *LEGACY)


@dataclass
class PruneUnitsConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Optional closed-loop success of the original and every pruned model (see `vlaprune eval`).
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EpisodesConfig = field(default_factory=EpisodesConfig)
    stacks: str = ""
    # Unit criterion (direction low: the units with the lowest value go). magnitude: the unit's weight norm;
    # wanda: sum |W| * ||X_j|| over calibration activations (Wanda); taylor: sum |W * dL/dW| on the action
    # loss (LLM-Pruner's first-order criterion); flap: Var_tokens(X_j) * ||W_:,j||^2 on the output
    # projection's input (FLAP); random: seeded uniform; dw: vlaprune's dW, sqrt(sum ||dW||^2 / sum
    # ||W_VLM||^2) over the unit's rows and columns (needs --base); dw_openvla: the divergence paper's
    # public-code OpenVLA recipe, per row ||dW_row|| / ||W_row|| (needs --base); dw_pi05: its pi0.5 recipe,
    # absolute row norms ||dW_row|| (needs --base); dw_prune_high: dw, the most-moved units go (older
    # name); dw_prune_low: dw, the least-moved units go (older name).
    criterion: str = "wanda"
    # More criteria to run on the same modules, comma-separated, each judged the same way.
    compare: str = ""
    # Ratio per stack and unit kind, comma-separated: STACK.mlp=R (FFN channels), STACK.attn=R (heads).
    ratios: str = ""
    # Or a fraction of the parameters to remove: per-module ratios searched greedily in steps of 0.1.
    budget: float = 0.0
    # Per-module criterion / direction / ratio / scope / protected blocks (see vlaprune.surgery.spec), e.g.
    # "language.mlp=dw_openvla:high:0.2:global:protect=0-4,30,31 vision.mlp=dw_openvla:low:0.1".
    spec: str = ""
    # real: the layers shrink; masked: the units are zeroed in place (shapes kept, nothing saved).
    removal: str = "real"
    # A module whose ratio removes no unit (it rounds to zero per block, or its blocks are protected) is an
    # error unless allowed; fewer units than asked is always reported (asked / possible / removed).
    allow_empty: bool = False
    # FLAP's bias compensation for the modules scored by `flap` (the removed units' mean output is added
    # to the output projection's bias).
    flap_bias: bool = False
    # Attention heads under grouped-query attention. groups: remove whole KV groups (a KV head with its query
    # heads); query: remove the same number of query heads inside every group.
    heads: str = "groups"
    # Base VLM for the dW criteria, and the VLA -> VLM name mapping (see `vlaprune diverge`).
    base: str = ""
    # VLA -> VLM name mapping: a preset (`vlaprune diverge --help` describes each) or prefix rules.
    map: str = "auto"
    # Fraction of each task's episodes held out for testing (the last ones): the reported loss / action
    # error are measured on these, scoring calibrates on the training episodes. 0: everything is reported
    # on the calibration batches. With --budget the search picks ratios by the loss on the `validation`
    # fraction before the test episodes (0: on the calibration batches), never on the test episodes.
    holdout: float = HOLDOUT
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
        if sum(map(bool, (self.ratios, self.budget, self.spec))) != 1:
            raise VlapruneError(
                "give one of --ratios=STACK.mlp=R,..., --budget=FRACTION or --spec=ITEMS (exactly one)"
            )
        if self.removal not in ("real", "masked"):
            raise VlapruneError(f"--removal={self.removal!r}; choose real or masked")
        named = self.criteria() + re.findall(r"=([A-Za-z_0-9]+)", self.spec)
        if any(c in DW for c in named) and not self.base:
            raise VlapruneError(
                "dW criteria (dw, dw_openvla, dw_pi05) need the base VLM's weights: "
                "pass --base=VLM_CHECKPOINT"
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
        """The criteria of the arms: --criterion (unless --spec names them per module), then --compare."""
        main = [] if self.spec else [self.criterion]
        return list(dict.fromkeys([*main, *(c.strip() for c in self.compare.split(",") if c.strip())]))


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
    if not policy.takes_datasets:
        raise VlapruneError(
            "prune-units judges a policy by its action loss on a dataset: give a lerobot policy or an "
            "OpenVLA-OFT folder with its action head"
        )
    for t in task_instructions(cfg.env) if cfg.env.type else ():  # OFT: LIBERO, its statistics and key
        closed_loop_policy(policy.module, cfg.env.type, t)
    depths = {s: len(st.blocks) for s, st in lay.stacks.items()}
    modules = parse_spec(cfg.spec, depths, CRITERIA, LEGACY) if cfg.spec else []
    n_tasks = len(task_instructions(cfg.env)) if cfg.env.type else 0
    data = Data(policy, cfg.dataset)
    judge = Judge(cfg, data, policy)
    coupled = coupled_stacks(lay)
    candidates = (
        [m.key for m in modules]
        or list(ratios)
        or [(s, k) for s in lay.stacks for k in ("mlp", "attn") if k == "mlp" or s not in coupled]
    )
    kinds: dict[str, set[str]] = {}
    for s, k in candidates:
        kinds.setdefault(s, set()).update(KINDS[k])
    lookup = _dw_lookup(cfg, policy.module)
    console = Console(width=max(Console().width, 100))
    arms = _arms(cfg, modules, ratios)
    dead = {s: d["update"] + d["whole"] for s, d in dead_blocks(lay).items()}
    for s, idx in dead.items():
        if any(k[0] == s for k in candidates):
            console.print(
                f"{s}: block(s) {idx} are dead compute (nothing reads their attention output / MLP, so every "
                "criterion scores them as free): not ranked; `vlaprune drop --drop.dead=true` removes them",
                markup=False,
            )
    episodes = n_tasks * cfg.eval.n_episodes * (1 + len(arms))
    bar = tqdm(total=episodes, desc="closed-loop episodes", disable=not episodes)
    original = {"criterion": "unpruned", "params": unique_params(policy.module), **judge(policy, bar.update)}
    total = original["params"]
    base_eps = {t: v["episodes_detail"] for t, v in original.get("success_tasks", {}).items()}
    rows, pruned_main = [], None
    for name, mods in arms:
        m = policy.copy()
        probe = Probe(m.layout(), sorted(kinds), judge.calibration, policy_loss(m.module, cfg.seed), cfg.seed)
        crits = {x.criterion for x in mods} or {LEGACY.get(name, (name,))[0]}
        stats = input_stats(probe, kinds) if crits & {"wanda", "flap"} else None
        if not mods:  # --budget: search the ratios on this criterion's scores
            crit, direction = LEGACY.get(name, (name, "low"))
            scores = unit_scores(probe, crit, kinds, dw_lookup=lookup, direction=direction, stats=stats)
            used = search(m, scores, candidates, cfg.budget, judge.selection_loss, cfg.heads, dead=dead)
            mods = [Module(s, k, r, crit, direction) for (s, k), r in used.items()]
        else:
            scores = score_modules(probe, mods, lookup, stats)
        labels = [label(x) for x in mods]  # as asked; dead blocks are protected on top (said above)
        mods = [_skip_dead(x, dead) for x in mods]
        try:
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
        except VlapruneError as e:
            if not rows:  # the main criterion's own plan is bad input
                raise
            # a compared criterion that cannot meet the same modules (e.g. zero scores empty a block)
            rows.append({"criterion": name, "spec": [label(x) for x in mods], "error": str(e)})
            console.print(f"{name}: not run: {e}")
            continue
        flap = [x.key for x in mods if x.criterion == "flap"] if cfg.flap_bias else []
        deltas = bias_compensation(m.layout(), units, stats, flap) if flap else {}
        plan = m.prune_units(units, cfg.removal, labels)
        plan.asked = acc
        for line in shortfall(acc):
            console.print(f"{name}: fewer units than asked: {line}")
        _add_biases(m, deltas)
        row = {
            "criterion": name,
            "spec": plan.spec,
            "removal": cfg.removal,
            "ratios": {f"{x.stack}.{x.kind}": x.ratio for x in mods},
            "units_removed": removed_units(units, scores),
            "modules": acc,
            "params": plan.params_after,
            "params_removed_pct": 100 * (1 - plan.params_after / total),
            **judge(m, bar.update),
        }
        row |= {"loss_before": original["loss"], "loss_change": row["loss"] - original["loss"]}
        if "success" in row and cfg.eval.sequential:  # rounds until decided (experiments/rounds.py)
            base_eps = units_in_rounds(judge, policy, m, row, base_eps)
        elif "success" in row:
            row["success_paired"] = paired(original, row)
        if "success" in row:
            row["success_change"] = row["success"] - original["success"]
        rows.append(row)
        cut = f"{row['params_removed_pct']:.1f}% of the parameters removed"
        cut = "masked: units zeroed in place, no parameters removed" if cfg.removal == "masked" else cut
        console.print(
            f"{name}: {cut} ("
            + ", ".join(f"{k}: {a['removed']} of {a['asked']:g} asked" for k, a in acc.items())
            + f"), loss {original['loss']:.4f} -> {row['loss']:.4f}"
            + (f", success {row['success']:.2f}" if "success" in row else "")
        )
        if pruned_main is None:
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
        "removal": cfg.removal,
        "random_weights": policy.random_weights,
        "removal_note": "units zeroed in place: shapes, parameters and FLOPs unchanged (no saving)"
        if cfg.removal == "masked"
        else "units removed: the layers shrank",
    }
    with data.processors_folder() as procs:  # the source's, or built from the dataset
        pruned_main.save(out, extra_json={"prune.json": report}, processors_from=procs)
    lat0, lat1 = (
        report["cost_original"]["latency"]["median_ms"],
        report["cost_pruned"]["latency"]["median_ms"],
    )
    main = rows[0]["criterion"]
    note = (
        " (masked: units zeroed in place; parameters, FLOPs and latency unchanged)"
        if cfg.removal == "masked"
        else ""
    )
    console.print(
        f"{main}: select_action {lat0:.1f} -> {lat1:.1f} ms{note}; wrote the pruned policy to {out}"
    )
    return report


def _skip_dead(m: Module, dead: dict[str, list[int]]) -> Module:
    """`m` with the dead blocks of its stack protected, so no criterion ranks dead units as free to cut."""
    extra = set(dead.get(m.stack, [])) - set(m.protect)
    return dataclasses.replace(m, protect=tuple(sorted(set(m.protect) | extra))) if extra else m


def _arms(cfg: PruneUnitsConfig, modules: list[Module], ratios: dict) -> list[tuple[str, list[Module]]]:
    """(label, modules) per pruned model: the spec and each --compare criterion on the spec's modules, or one
    arm per criterion on --ratios (modules empty under --budget: searched per arm)."""
    if modules:
        swap = dataclasses.replace
        return [("spec", modules)] + [
            (c, [swap(x, criterion=c, direction="low") for x in modules]) for c in cfg.criteria()
        ]
    out = []
    for c in cfg.criteria():
        crit, direction = LEGACY.get(c, (c, "low"))
        out.append((c, [Module(s, k, r, crit, direction) for (s, k), r in ratios.items()]))
    return out


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
