r"""`vlaprune score`: rank blocks by importance with one or more methods, and compare them with leave-one-out.

    vlaprune score --policy.path=lerobot/smolvla_base --dataset.repo_id=lerobot/libero_spatial \
        --method=gateprobe --components=vision,language,action --calibration.batches=8 \
        --compare=block_influence,magnitude

List flags take comma-separated values (`--compare=a,b`) or draccus's own form (`--compare='[a,b]'`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlaprune import __version__
from vlaprune.atomic import write_json_atomic
from vlaprune.configs import CalibrationConfig, DatasetConfig, PolicyConfig
from vlaprune.data import Data, policy_loss
from vlaprune.errors import VlapruneError
from vlaprune.policy import Loaded, load_policy
from vlaprune.scoring import BLOCK_ONLY, METHODS, NEEDS_DATA
from vlaprune.scoring.gates import GRANULARITIES
from vlaprune.scoring.probe import Probe, Scores
from vlaprune.surgery.dead import dead_blocks


@dataclass
class ScoreConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Scoring method (a key of vlaprune.scoring.METHODS).
    method: str = "gateprobe"
    # Extra methods to run (a list); all are then compared with leave-one-out (Spearman, Kendall).
    compare: list[str] = field(default_factory=list)
    # Stacks to score, by component or stack name (a list; empty: all).
    components: list[str] = field(default_factory=list)
    # Name the stacks yourself (see `vlaprune inspect --help`).
    stacks: str = ""
    # Calibration batches (--calibration.batches, --calibration.batch_size).
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Seed of the calibration batches, noise and time samples.
    seed: int = 0
    # Gates: block: one per block; sublayer: one per residual branch (attention, MLP), for
    # gateprobe_branch(_abs) only.
    granularity: str = "block"
    # Hutchinson probes per batch (hessian_trace).
    probes: int = 8
    # Integration steps from gate 0 to gate 1 (integrated_gradients).
    ig_steps: int = 8
    # Blocks per contiguous span (contiguous_cossim).
    span: int = 2
    # Where the scores go (JSON: per method, stack and block; higher = more important).
    output: str = "scores.json"

    def __post_init__(self) -> None:
        for m in self.methods():
            if m not in METHODS:
                raise VlapruneError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        for name in ("probes", "ig_steps", "span"):
            if getattr(self, name) < 1:
                raise VlapruneError(f"--{name}={getattr(self, name)}: must be at least 1")
        if self.granularity not in GRANULARITIES:
            raise VlapruneError(f"--granularity={self.granularity!r}; choose one of {GRANULARITIES}")
        whole = [m for m in self.methods() if m in BLOCK_ONLY]
        if self.granularity != "block" and whole:
            raise VlapruneError(
                f"--granularity={self.granularity} does not apply to {', '.join(whole)} (one gate per whole "
                "block, as the paper defines it); use gateprobe_branch / gateprobe_branch_abs for sublayers"
            )

    def methods(self) -> list[str]:
        return list(dict.fromkeys([self.method, *self.compare, *(["loo"] if self.compare else [])]))


def select_stacks(available: dict, components: list[str]) -> list[str]:
    """Stack names for a list of components or names; all stacks when empty."""
    if not components:
        return list(available)
    chosen: list[str] = []
    for c in components:
        match = [n for n, s in available.items() if n == c or s.component == c]
        if not match:
            raise VlapruneError(f"unknown component {c!r}; this model has {', '.join(available)}")
        chosen += [m for m in match if m not in chosen]
    return chosen


def ranking(scores: dict[str, list[float]]) -> list[tuple[str, int]]:
    """All blocks, least important first (ascending score), ties by stack order then index."""
    items = [(v, s, i) for s, vals in scores.items() for i, v in enumerate(vals)]
    return [(s, i) for v, s, i in sorted(items, key=lambda t: t[0])]


def agreement(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, Any]:
    """Spearman and Kendall rank correlation of two score sets, per stack and over all blocks."""
    from scipy.stats import kendalltau, spearmanr

    def pair(x: list[float], y: list[float]) -> dict[str, float | None]:
        if len(x) < 2:
            return {"spearman": None, "kendall": None}
        rs, rk = spearmanr(x, y).statistic, kendalltau(x, y).statistic
        clean = lambda v: None if v != v else round(float(v), 4)  # noqa: E731  (NaN for constant input)
        return {"spearman": clean(rs), "kendall": clean(rk)}

    out = {s: pair(a[s], b[s]) for s in a}
    out["all"] = pair([v for s in a for v in a[s]], [v for s in a for v in b[s]])
    return out


def score(probe: Probe, method: str) -> tuple[Scores, float]:
    t0 = time.perf_counter()
    result = METHODS[method](probe)
    return result, time.perf_counter() - t0


def counted(loss, bars: list):
    """`loss` that ticks the progress bar in `bars` (if any) once per calibration batch it runs: leave-one-out
    and greedy run many passes per batch on real models, so the bar shows they are moving."""

    def run(i, batch):
        for bar in bars:
            bar.update(1)
        return loss(i, batch)

    return run


def run(cfg: ScoreConfig) -> dict[str, Any]:
    """Load, calibrate, score with every requested method, print ranked tables, write scores.json."""
    from rich.console import Console

    policy = load_policy(cfg.policy, cfg.stacks)
    lay = policy.layout()
    stacks = select_stacks(lay.stacks, cfg.components)
    bars: list = []  # the progress bar of the method running (stderr)
    probe = _probe(cfg, policy, stacks, bars)
    base = probe.mean_loss() if probe.batches else None  # before any method runs
    console = Console(width=max(Console().width, 100))
    results = {m: _scored(probe, m, bars, console) for m in cfg.methods()}
    out = _record(cfg, policy, stacks, base, results)
    _dead(out, lay, stacks, console)
    if cfg.compare:
        out["agreement_with_loo"] = {
            m: agreement(results[m]["scores"], results["loo"]["scores"]) for m in results if m != "loo"
        }
        console.print(agreement_table(out["agreement_with_loo"]))
    write_json_atomic(cfg.output, out)
    console.print(f"wrote {cfg.output}")
    return out


def _probe(cfg: ScoreConfig, policy: Loaded, stacks: list[str], bars: list) -> Probe:
    """The probe every method scores through: the calibration batches (none when no method needs data) and
    the policy's loss, ticking `bars` once per batch."""
    batches: list = []
    loss: Callable | None = None
    if "perplexity" in cfg.methods():  # refuse before calibrating: no language-model head, other stacks
        from vlaprune.scoring.perplexity import check

        check(policy.layout(), stacks)
    if any(m in NEEDS_DATA for m in cfg.methods()):
        if not policy.takes_datasets:
            raise VlapruneError(
                "data-driven scoring needs a lerobot policy or an OpenVLA-OFT checkpoint with its action "
                "head; use --method=magnitude for others"
            )
        c = cfg.calibration
        batches = Data(policy, cfg.dataset).batches(c.batches, c.batch_size, cfg.seed)
        loss = counted(policy_loss(policy.module, cfg.seed), bars)
    settings = {"probes": cfg.probes, "ig_steps": cfg.ig_steps, "span": cfg.span}
    return Probe(policy.layout(), stacks, batches, loss, cfg.seed, cfg.granularity, **settings)


def _scored(probe: Probe, method: str, bars: list, console) -> dict[str, Any]:
    """One method's scores (with a progress bar over its loss passes), printed as a ranked table."""
    from tqdm.auto import tqdm

    lay, n = probe.layout, len(probe.batches)
    console.print(f"[bold]{method}[/]: scoring {sum(len(lay.stacks[s]) for s in probe.stacks)} blocks ...")
    with tqdm(desc=f"{method}: loss passes over {n} batches", unit="pass", disable=not n) as bar:
        bars[:] = [bar]
        sc, secs = score(probe, method)
    bars.clear()
    console.print(table(method, sc.blocks))
    return {
        "scores": sc.blocks,
        "rank": [f"{s}/{i}" for s, i in ranking(sc.blocks)],
        "seconds": round(secs, 4),
        "detail": sc.detail,
    }


def _record(cfg: ScoreConfig, policy: Loaded, stacks: list[str], loss: float | None, results: dict) -> dict:
    """What scores.json holds: the settings, the baseline loss and every method's results."""
    lay = policy.layout()
    return {
        "method": cfg.method,
        "policy": cfg.policy.path,
        "random_weights": policy.random_weights,
        "family": lay.family,
        "stacks": stacks,
        "blocks": {s: len(lay.stacks[s]) for s in stacks},
        "dataset": {
            "repo_id": cfg.dataset.repo_id,
            "root": cfg.dataset.root,
            "episodes": cfg.dataset.episodes,
        },
        "batches": cfg.calibration.batches,
        "batch_size": cfg.calibration.batch_size,
        "seed": cfg.seed,
        "granularity": cfg.granularity,
        "loss": loss,
        "direction": "higher score = more important (keep)",
        "vlaprune_version": __version__,
        "results": results,
    }


def _dead(out: dict, lay, stacks: list[str], console) -> None:
    """Name the dead blocks in `out` and on the console: blocks whose residual update nothing reads
    (`surgery.dead`) score ~0 by construction, which says nothing about importance."""
    dead = {s: d["update"] + d["whole"] for s, d in dead_blocks(lay).items() if s in stacks}
    out["dead"] = dead
    for s, idx in dead.items():
        console.print(
            f"{s}: block(s) {idx} are dead compute (their attention output / MLP feed nothing the policy "
            "reads; only their K/V are): a low score there means nothing; `vlaprune drop --drop.dead=true` "
            "removes them with identical actions",
            markup=False,
        )


def table(method: str, scores: dict[str, list[float]]):
    from rich.table import Table

    t = Table(title=f"{method}: blocks ranked per stack (higher = keep)", title_justify="left")
    for col in ("stack", "rank", "block", "score"):
        t.add_column(col, justify="left" if col == "stack" else "right")
    for s, vals in scores.items():
        order = sorted(range(len(vals)), key=lambda i: -vals[i])
        for r, i in enumerate(order):
            t.add_row(s if r == 0 else "", str(r + 1), str(i), f"{vals[i]:.5g}")
    return t


def agreement_table(agree: dict[str, Any]):
    from rich.table import Table

    t = Table(title="rank agreement with leave-one-out (Spearman / Kendall)", title_justify="left")
    t.add_column("method")
    cols = list(next(iter(agree.values())))
    for c in cols:
        t.add_column(c, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:+.2f}"  # noqa: E731
    for m, per in agree.items():
        t.add_row(m, *[f"{fmt(per[c]['spearman'])} / {fmt(per[c]['kendall'])}" for c in cols])
    return t
