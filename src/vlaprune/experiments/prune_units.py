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

List flags (`--compare`, `--env.task`) take comma-separated values or draccus's own form (`'[a,b]'`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.adapters import closed_loop_policy
from vlaprune.adapters.counting import unique_params
from vlaprune.configs import (
    HOLDOUT,
    CalibrationConfig,
    DatasetConfig,
    EnvConfig,
    EpisodesConfig,
    PolicyConfig,
)
from vlaprune.data import Data
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.cost import cost
from vlaprune.evaluate.run import task_instructions
from vlaprune.experiments.judge import Judge, table
from vlaprune.experiments.unit_arms import Setup, arm
from vlaprune.policy import Loaded, load_policy
from vlaprune.scoring.units import CRITERIA, LEGACY
from vlaprune.surgery.dead import dead_blocks
from vlaprune.surgery.ratios import KINDS, Module, parse_ratios
from vlaprune.surgery.spec import parse_spec
from vlaprune.surgery.units import coupled_stacks

DW = ("dw", "dw_openvla", "dw_pi05", *LEGACY)


@dataclass
class PruneUnitsConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Optional closed-loop success of the original and every pruned model (see `vlaprune eval`).
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EpisodesConfig = field(default_factory=EpisodesConfig)
    # Name the stacks yourself (see `vlaprune inspect --help`).
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
    # More criteria to run on the same modules (a list), each judged the same way.
    compare: list[str] = field(default_factory=list)
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
    # Fraction of each task's episodes before the test ones that --budget's search judges ratios on.
    validation: float = 0.2
    # Calibration batches (--calibration.batches, --calibration.batch_size), drawn from the training
    # episodes; the held-out and validation batches are as many, as large.
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Seed of the calibration batches, the random criterion and the policy's noise / time samples.
    seed: int = 0
    # Required: the folder the pruned checkpoints and prune_units.json go to.
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
        return list(dict.fromkeys([*main, *self.compare]))


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
    from tqdm.auto import tqdm

    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        raise VlapruneError(f"{out} already exists and is not empty; choose a new --output_dir")
    s = _setup(cfg)
    arms = _arms(cfg, s.modules, s.ratios)
    n_tasks = len(task_instructions(cfg.env)) if cfg.env.type else 0
    episodes = n_tasks * cfg.eval.n_episodes * (1 + len(arms))
    bar = tqdm(total=episodes, desc="closed-loop episodes", disable=not episodes)
    original = {
        "criterion": "unpruned",
        "params": unique_params(s.policy.module),
        **s.judge(s.policy, bar.update),
    }
    s.base_episodes = {t: v["episodes_detail"] for t, v in original.get("success_tasks", {}).items()}
    rows, pruned_main = [], None
    for name, mods in arms:
        row, pruned = arm(s, name, mods, original, bar.update, first=not rows)
        rows.append(row)
        if pruned_main is None:
            pruned_main = pruned
    bar.close()
    s.console.print(table(original, rows, s.judge.held_out))
    report = _report(s, original, rows, pruned_main)
    with s.data.processors_folder() as procs:  # the source's, or built from the dataset
        pruned_main.save(out, extra_json={"prune.json": report}, processors_from=procs)
    lat0, lat1 = (report[k]["latency"]["median_ms"] for k in ("cost_original", "cost_pruned"))
    note = MASKED_LATENCY if cfg.removal == "masked" else ""
    main = rows[0]["criterion"]
    s.console.print(
        f"{main}: select_action {lat0:.1f} -> {lat1:.1f} ms{note}; wrote the pruned policy to {out}"
    )
    return report


MASKED_LATENCY = " (masked: units zeroed in place; parameters, FLOPs and latency unchanged)"


def _setup(cfg: PruneUnitsConfig) -> Setup:
    """Load the policy and its data, check what the run needs, and fix what every arm shares."""
    from rich.console import Console

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
    data = Data(policy, cfg.dataset)
    coupled = coupled_stacks(lay)
    candidates = (
        [m.key for m in modules]
        or list(ratios)
        or [(s, k) for s in lay.stacks for k in ("mlp", "attn") if k == "mlp" or s not in coupled]
    )
    kinds: dict[str, set[str]] = {}
    for s, k in candidates:
        kinds.setdefault(s, set()).update(KINDS[k])
    setup = Setup(
        cfg=cfg,
        policy=policy,
        data=data,
        judge=Judge(cfg, data, policy),
        modules=modules,
        ratios=ratios,
        candidates=candidates,
        kinds=kinds,
        lookup=_dw_lookup(cfg, policy.module),
        dead={s: d["update"] + d["whole"] for s, d in dead_blocks(lay).items()},
        console=Console(width=max(Console().width, 100)),
    )
    _say_dead(setup)
    return setup


def _say_dead(s: Setup) -> None:
    for stack, idx in s.dead.items():
        if any(k[0] == stack for k in s.candidates):
            s.console.print(
                f"{stack}: block(s) {idx} are dead compute (nothing reads their attention output / MLP, so "
                "every criterion scores them as free): not ranked; `vlaprune drop --drop.dead=true` removes "
                "them",
                markup=False,
            )


def _report(s: Setup, original: dict, rows: list[dict], pruned_main: Loaded) -> dict[str, Any]:
    """prune.json: the original, every arm's row, what they were judged on, and the main arm's cost."""
    cfg, judge = s.cfg, s.judge
    return {
        "original": original,
        "rows": rows,
        "judged_on": {
            "episodes": judge.episodes,
            "held_out": judge.held_out,
            "splits": dataclasses.asdict(judge.parts),
            "budget_search_on": "validation" if judge.parts.validation else "calibration (train)",
            "batches": cfg.calibration.batches,
            "batch_size": cfg.calibration.batch_size,
            "closed_loop": dataclasses.asdict(cfg.env) | dataclasses.asdict(cfg.eval)
            if cfg.env.type
            else None,
        },
        "cost_original": cost(s.policy.layout(), 5, 1),
        "cost_pruned": cost(pruned_main.layout(), 5, 1),
        "removal": cfg.removal,
        "random_weights": s.policy.random_weights,
        "removal_note": "units zeroed in place: shapes, parameters and FLOPs unchanged (no saving)"
        if cfg.removal == "masked"
        else "units removed: the layers shrank",
    }


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
