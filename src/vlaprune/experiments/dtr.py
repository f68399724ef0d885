"""`vlaprune dtr`: the Drop-Then-Recovery protocol as a resumable sweep over a results store.

For each seed: score every block of the chosen components with every method (one `scores` row each);
measure the unpruned baseline; then for each component x level x method pick the blocks to drop (the
lowest-scoring ones; made valid under the architecture's coupling rules, preferring to drop more) and
measure that plan: evaluate without recovery -> recover with the *same budget* as the baseline (the
baseline is fine-tuned with it too) -> evaluate again. Identical plans (methods that agree, coupled stacks)
are measured once. Every measurement is one row of the store (see `store.py`): a killed sweep reruns and
skips finished rows; `--shard=i/n` runs every n-th measurement so that n processes or cluster jobs can
share one store. Once every measurement is in the store, the variant the verdict picks goes to
`<output_dir>/selected/` (`select.py`), a checkpoint lerobot's tools load.

The `--sweep.*` lists take comma-separated values (`--sweep.levels=drop_half,0.5`) or draccus's own form
(`--sweep.levels='[drop_half,0.5]'`).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlaprune import __version__
from vlaprune.adapters.anatomy import anatomy
from vlaprune.configs import CalibrationConfig, DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.data import Data, Splits, policy_loss
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.run import task_instructions
from vlaprune.experiments.measure import measure_one
from vlaprune.experiments.rounds import continue_after
from vlaprune.experiments.select import export, none_selected
from vlaprune.experiments.store import Store, row_id
from vlaprune.policy import Loaded, load_policy
from vlaprune.recover.budget import BUDGETS
from vlaprune.recover.modes import MODES as RECOVER_MODES
from vlaprune.scoring import METHODS, SUBLAYER_METHODS, Probe
from vlaprune.surgery.levels import PROTOCOL_LEVELS, level_count
from vlaprune.surgery.plan import MODES
from vlaprune.surgery.select import check_component, choices, n_blocks, partners, stacks_of
from vlaprune.surgery.sublayers import PARTS


@dataclass
class SweepConfig:
    # Components to cut (stack names or components).
    components: list[str] = field(default_factory=lambda: ["vision", "language", "action"])
    # Cut levels. FRACTION: that fraction of the stack's blocks, the lowest-scoring (0.5);
    # N: a count (12: the paper's Drop-12); all-but-N: every block but N; drop_half: the odd-indexed blocks
    # (the paper's metric-free protocol: one plan whatever the method); keep_2: all but the first and the
    # last (likewise).
    levels: list[str] = field(default_factory=lambda: ["0.25", "0.5", "0.75", "all-but-2"])
    # Ranking methods (vlaprune.scoring.METHODS keys).
    methods: list[str] = field(default_factory=lambda: ["gateprobe", "block_influence"])
    # Seeds (a list): scoring, the baseline and every variant's recovery run once per seed.
    seeds: list[int] = field(default_factory=lambda: [0])
    # Drop mode, as `vlaprune drop --drop.mode`. auto: each component cut alone, as the paper does (language
    # blocks of SmolVLA / pi0 / pi0.5 keep their keys / values for the action expert, action-expert blocks go
    # while every language block stays); keep_kv: the same, refused for stacks nothing reads K/V from;
    # pair: whole coupled pairs.
    mode: str = "auto"
    # What goes of each chosen block, several for the paper's granularity ablation (ranked sublayer
    # levels use the sublayer gates' own scores, so only gateprobe_branch / gateprobe_branch_abs rank them;
    # protocol levels need no scores). block: the whole block; attn: its attention only; mlp: its MLP only.
    parts: list[str] = field(default_factory=lambda: ["block"])


@dataclass
class BudgetConfig:
    """The recovery budget every variant (and the baseline) gets."""

    # Optimizer steps (every variant and the baseline alike;
    # with --recover.kind=flops_matched, the baseline's).
    steps: int = 1000
    # Frames per optimizer step.
    batch_size: int = 16
    # Peak learning rate (default: the policy's lerobot preset), as `vlaprune recover --lr`.
    lr: float | None = None
    # preset: the policy's own trainable flags (e.g. SmolVLA trains the expert only); all: everything.
    trainable: str = "preset"
    # Data augmentation: random image shifts of up to this many pixels (0 = none).
    image_shift: int = 0
    # same_steps: every variant trains `steps`; flops_matched: every variant trains for the baseline's
    # total training FLOPs (a smaller model gets more steps; recover/budget.py).
    kind: str = "same_steps"
    # What recovery trains: full (the policy), or lora (peft adapters, merged at the end: OpenVLA-OFT's own
    # recipe with its head and projectors trained fully, as the DTR paper fine-tunes OFT; else lerobot's), or
    # distill (from the unpruned policy the sweep starts from; the baseline from its own copy).
    mode: str = "full"

    def __post_init__(self) -> None:
        if self.mode not in RECOVER_MODES:
            raise VlapruneError(f"--recover.mode={self.mode!r}; choose one of {', '.join(RECOVER_MODES)}")


@dataclass
class DTRConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    recover: BudgetConfig = field(default_factory=BudgetConfig)
    # Closed-loop episodes per task per measurement, first seed, parallel simulators (--eval.n_episodes, ...).
    eval: EpisodesConfig = field(default_factory=EpisodesConfig)
    # Probes (language and vision sensitivity) on the baseline, with this many episodes per task (0: none).
    probe_episodes: int = 5
    # Held-out fraction of the dataset's episodes for the offline loss.
    holdout: float = 0.2
    # Calibration batches for scoring (--calibration.batches, --calibration.batch_size; the offline loss uses
    # batches of the same size).
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Offline loss on at most this many held-out batches (a seeded random subset; 0 = every frame).
    offline_batches: int = 0
    # Where the results store (one row per measurement, resumable), checkpoints and report go.
    output_dir: str = "runs/dtr"
    # "i/n": run only every n-th measurement (fan-out over processes / Slurm array jobs).
    shard: str = ""

    def __post_init__(self) -> None:
        for m in self.sweep.methods:
            if m not in METHODS:
                raise VlapruneError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if self.sweep.mode not in MODES:
            raise VlapruneError(f"--sweep.mode={self.sweep.mode!r}; choose one of {', '.join(MODES)}")
        for part in self.sweep.parts:
            if part not in PARTS:
                raise VlapruneError(f"--sweep.parts: unknown part {part!r}; choose from {', '.join(PARTS)}")
        if self.recover.kind not in BUDGETS:
            raise VlapruneError(f"--recover.kind={self.recover.kind!r}; choose one of {', '.join(BUDGETS)}")
        if self.probe_episodes < 0:
            raise VlapruneError(
                f"--probe_episodes={self.probe_episodes}: episodes per probe condition, or 0 for none"
            )
        if self.recover.steps < 1:
            raise VlapruneError("--recover.steps must be >= 1 (the same budget for every variant)")
        for level in self.sweep.levels:
            if level not in PROTOCOL_LEVELS:
                level_count(level, 2)  # raises on a level that is neither a fraction, a count nor all-but-K
        if self.shard and not _parse_shard(self.shard):
            raise VlapruneError(f"--shard={self.shard!r}: expected i/n with 0 <= i < n")
        if not 0 < self.holdout < 1:
            raise VlapruneError(
                f"--holdout={self.holdout}: the offline loss is measured on held-out episodes; give a "
                "fraction in (0, 1)"
            )
        if self.env.type:
            task_instructions(self.env)  # unknown task names fail now, before anything is written


def _parse_shard(text: str) -> tuple[int, int] | None:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        return None
    return (i, n) if 0 <= i < n else None


def settings(cfg: DTRConfig, data: Data, parts: Splits) -> dict[str, Any]:
    """Every setting besides the plan, seed and budget that changes a measurement: part of each row's spec,
    so a row measured under other settings is never reused. `n_envs` and the device are left out: an
    episode does not depend on them (tested)."""
    root = str(Path(cfg.dataset.root).resolve()) if cfg.dataset.root else None
    return {
        "policy": cfg.policy.path,
        "dataset": {"id": data.identity(), "root": root, "episodes": cfg.dataset.episodes},
        "splits": {"train": parts.train, "test": parts.test},
        "calibration": {"batches": cfg.calibration.batches, "batch_size": cfg.calibration.batch_size},
        "offline_batches": cfg.offline_batches,
        "env": asdict(cfg.env) if cfg.env.type else None,
        "episodes": _episodes(cfg.eval) if cfg.env.type else None,
        "vlaprune_version": __version__,
    }


def _episodes(e: EpisodesConfig) -> dict[str, Any]:
    """The episode settings of a row's spec (the sequential ones only when on: fixed rows keep their ids)."""
    out: dict[str, Any] = {"n_episodes": e.n_episodes, "seed": e.seed}
    return out | ({"sequential": [e.round_episodes, e.max_episodes]} if e.sequential else {})


def run(cfg: DTRConfig, measure: Callable | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; returns counts. `measure` is injectable for tests."""
    sw = _start(cfg)
    todo = _plan(sw)
    shard = _parse_shard(cfg.shard) if cfg.shard else (0, 1)
    mine = [t for i, t in enumerate(todo) if i % shard[1] == shard[0]]
    done = sum(sw.store.has(t[0], t[1]) for t in mine)
    sw.say(f"DTR: {len(todo)} measurements ({len(mine)} in this shard, {done} already in the store)")
    for i, (mid, mspec, _) in enumerate(mine):
        if not sw.store.has(mid, mspec):
            what = mspec["drops"] or "none (baseline)"
            sw.say(f"({i + 1}/{len(mine)}) measuring drops={what} seed={mspec['seed']}")
            _measure(sw, todo, mid, mspec, measure or measure_one)
    selected = None
    if cfg.env.type and all(sw.store.has(t[0], t[1]) for t in todo):  # the whole sweep is in the store
        selected = export(cfg.output_dir)
        sw.say(
            f"selected variant (fewest parameters that keeps success): {selected}"
            if selected
            else none_selected(cfg.output_dir)
        )
    sw.say(f"report: vlaprune report {cfg.output_dir}")
    return {
        "measurements": len(todo),
        "this_shard": len(mine),
        "rows": len(sw.store.rows()),
        "selected": str(selected) if selected else None,
    }


def _start(cfg: DTRConfig) -> Sweep:
    """Open the store, write the config, load the policy and its data, and store its anatomy row once."""
    from rich.console import Console

    spec = asdict(cfg)
    spec.pop("output_dir"), spec.pop("shard")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "dtr_config.json").write_text(
        json.dumps(asdict(cfg), indent=2, default=str) + "\n"
    )
    policy = load_policy(cfg.policy)
    lay = policy.layout()
    data = Data(policy, cfg.dataset)  # opened once for scoring, recovery and every evaluation
    parts = data.splits(test=cfg.holdout)  # recovery and scoring: train; offline loss: test
    for c in cfg.sweep.components:
        check_component(lay, c)  # a stack, or a component of several (OFT's "vision": both towers)
    setting = settings(cfg, data, parts)
    sw = Sweep(cfg, Store(cfg.output_dir), row_id(spec), policy, data, parts, setting, row_id(setting))
    sw.console = Console(width=max(Console().width, 100))
    rid = row_id({"kind": "anatomy", "policy": cfg.policy.path})
    if not sw.store.has(rid):
        row = {"kind": "anatomy", "spec": {"policy": cfg.policy.path}}
        sw.store.put(
            rid, row | {"anatomy": {**anatomy(lay), "random_weights": policy.random_weights}}, sw.chash
        )
    return sw


def _plan(sw: Sweep) -> list[tuple[str, dict, dict]]:
    """Score every method on every seed, then list the measurements: (row id, measurement spec, the plan row
    pointing at it), the baseline of each seed first; identical plans are measured once. Stores the plan
    rows (rewritten when they point at another measurement)."""
    cfg, lay, mode = sw.cfg, sw.policy.layout(), sw.cfg.sweep.mode
    comps = cfg.sweep.components
    scored = list(
        dict.fromkeys(s for c in comps for s in partners(lay, c, mode))
    )  # plan costs count partners
    scorer = Scorer(sw.store, cfg, sw.chash, sw.policy, sw.data, sw.parts.train, sw.setting)
    sublayers = set(cfg.sweep.parts) - {"block"}
    todo: list[tuple[str, dict, dict]] = []
    plans: list[tuple[str, dict]] = []
    for seed in cfg.sweep.seeds:
        scores = {m: scorer.scores(scored, m, seed) for m in cfg.sweep.methods}
        base = {"drops": {}, "seed": seed, "budget": asdict(cfg.recover)}
        base |= {"settings": sw.setting, "settings_id": sw.sid}
        base["probe_episodes"] = cfg.probe_episodes if cfg.env.type else None
        todo.append((row_id(base), base, {}))
        sub_scores = {
            m: scorer.scores([s for c in comps for s in stacks_of(lay, c)], m, seed, "sublayer")
            for m in cfg.sweep.methods
            if m in SUBLAYER_METHODS and sublayers
        }
        for part, c, level in itertools.product(cfg.sweep.parts, comps, cfg.sweep.levels):
            for mspec, prow in _level_rows(sw, Cut(seed, part, c, level), scores, sub_scores):
                plans.append((row_id(prow["spec"]), prow))
                if all(t[0] != prow["measurement"] for t in todo):
                    todo.append((prow["measurement"], mspec, prow))
    for pid, prow in plans:
        if not sw.store.has(pid, prow["spec"]) or sw.store.get(pid).get("measurement") != prow["measurement"]:
            sw.store.put(pid, prow, sw.chash, prow["spec"]["seed"])
    return todo


def _level_rows(sw: Sweep, cut: Cut, scores: dict, sub_scores: dict) -> list[tuple[dict, dict]]:
    """(measurement spec, plan row) of each method's blocks for one cut (none when the level cannot be
    cut from this stack: said on the console)."""
    lay, mode = sw.policy.layout(), sw.cfg.sweep.mode
    try:
        k, options = choices(
            lay, cut.component, cut.level, cut.part, mode, scores=scores, sub_scores=sub_scores
        )
    except VlapruneError as e:
        sw.say(f"skipping {cut.component} {cut.level} ({cut.part}): {e}")
        return []
    if not 0 < k < n_blocks(lay, cut.component) + (cut.part != "block"):
        return []
    out = []
    for m, drops in options:
        if drops is None:
            continue
        mspec = {"drops": drops, "mode": mode, "seed": cut.seed, "budget": asdict(sw.cfg.recover)}
        mspec |= {"settings": sw.setting, "settings_id": sw.sid}
        pspec = {"component": cut.component, "level": cut.level, "method": m, "seed": cut.seed}
        pspec["settings_id"] = sw.sid
        if cut.part != "block":  # whole-block rows keep the ids they had before sublayer drops
            mspec["part"] = pspec["part"] = cut.part
        prow = {"kind": "plan", "spec": pspec, "requested_blocks": k, "drops": drops}
        out.append((mspec, prow | {"measurement": row_id(mspec)}))
    return out


def _measure(sw: Sweep, todo: list, mid: str, mspec: dict, measure: Callable) -> None:
    """Measure one row (continued in rounds under --eval.sequential: rounds.py) and store it."""
    cfg = sw.cfg
    t0 = time.perf_counter()
    work = Path(cfg.output_dir) / "work" / mid
    if sw.store.has(mid) and work.exists():
        shutil.rmtree(work)  # a row measured under another spec: its checkpoints are stale too
    splits = (sw.parts.train, sw.parts.test)
    result = measure(cfg, mspec, work, baseline=not mspec["drops"], data=sw.data, splits=splits)
    if cfg.eval.sequential and cfg.env.type and mspec["drops"]:  # rounds until decided (rounds.py)
        base_id = next(t[0] for t in todo if not t[1]["drops"] and t[1]["seed"] == mspec["seed"])
        result = continue_after(cfg, sw.store, base_id, work, result, data=sw.data, chash=sw.chash)
    row = {"kind": "measure", "spec": mspec, **result, "seconds": time.perf_counter() - t0}
    sw.store.put(mid, row, sw.chash, mspec["seed"])


@dataclass
class Cut:
    """One cell of the sweep: a seed, what goes of each block, a component and a level."""

    seed: int
    part: str
    component: str
    level: str


@dataclass
class Sweep:
    """What a sweep's steps share: its config, store and config hash, the policy and its data (train / test
    splits), the settings every row records and their id, and the console it reports on."""

    cfg: DTRConfig
    store: Store
    chash: str
    policy: Loaded
    data: Data
    parts: Splits
    setting: dict
    sid: str
    console: Any = None

    def say(self, text: str) -> None:
        self.console.print(text, markup=False)


@dataclass
class Scorer:
    """What the sweep's scores depend on, fixed for a run; `scores` computes a method's scores once per
    settings (the store keeps them)."""

    store: Store
    cfg: DTRConfig
    chash: str
    policy: Loaded
    data: Data
    train: list[int]
    setting: dict

    def scores(self, comps: list[str], method: str, seed: int, granularity: str = "block") -> dict:
        """{stack: per-block scores} of `method` (stored once per settings); with granularity "sublayer" the
        per-sublayer scores {"attn" | "mlp": {stack: per-block scores}} (`gateprobe._branch_scores`)."""
        keys = ("policy", "dataset", "splits", "calibration", "vlaprune_version")  # what the scores depend on
        spec = {
            "kind": "scores",
            "method": method,
            "seed": seed,
            "components": comps,
            "settings": {k: self.setting[k] for k in keys},
        }
        if granularity != "block":
            spec["granularity"] = granularity
        rid = row_id(spec)
        field_ = "scores" if granularity == "block" else "parts"
        if self.store.has(rid, spec):
            return self.store.get(rid)[field_]
        c = self.cfg.calibration
        batches = self.data.batches(c.batches, c.batch_size, seed, self.train)
        probe = Probe(
            self.policy.layout(), comps, batches, policy_loss(self.policy.module, seed), seed, granularity
        )
        t0 = time.perf_counter()
        result = METHODS[method](probe)
        self.store.put(
            rid,
            {
                "kind": "scores",
                "spec": spec,
                "scores": result.blocks,
                "parts": result.detail.get("parts"),
                "seconds": time.perf_counter() - t0,
                "loss": probe.mean_loss(),
            },
            self.chash,
            seed,
        )
        return result.blocks if granularity == "block" else result.detail["parts"]
