"""`vlaprune demo`: the main job on its embedded default, on 2 CPU cores in under 10 minutes, offline.

A lerobot SmolVLA trained on four MetaWorld tasks (shipped with the package, built by
scripts/build_demo_assets.py) goes through a reduced Drop-Then-Recovery sweep, the paper's component
protocol: vision, language (keep-K/V: the action expert keeps every block and still reads the dropped
language blocks' keys / values) and action (action-only: every language block stays), each cut alone with
drop_half and a GateProbe-ranked half beside it (`--levels=drop_half,keep_2,0.5` adds keep_2, ~2.5 min
more); a short recovery
with the same budget for every variant and for the unpruned baseline; closed-loop success before and
after, every cut compared with the recovered baseline episode by episode (paired interval); task
speed-up; language- and vision-sensitivity probes on the baseline; then the HTML / Markdown report. Every
number in the report is measured in this run. Rerunning resumes (finished rows are skipped); delete the
output folder to measure again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from vlaprune.configs import CalibrationConfig, DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.closed_loop import close_envs
from vlaprune.experiments import assets, report
from vlaprune.experiments.dtr import BudgetConfig, DTRConfig, SweepConfig
from vlaprune.experiments.dtr import run as dtr
from vlaprune.experiments.store import Store


@dataclass
class DemoConfig:
    # Where the demo writes its results store and report.
    output_dir: str = "vlaprune-demo"
    # Closed-loop episodes per task per measurement.
    eval_episodes: int = 3
    # Closed-loop episodes per task for each probe condition (language and vision sensitivity; 0: no probes).
    probe_episodes: int = 2
    # Sequential paired verdicts (--eval.sequential): after recovery each cut runs rounds of round_episodes
    # more per task until its comparison with the recovered baseline is decided, at most max_episodes per
    # task (each round costs ~15 s per cut on 2 cores; an undecided cut says how many more it would need).
    sequential: bool = True
    # Episodes per task added in each sequential round.
    round_episodes: int = 2
    # At most this many episodes per task per cut.
    max_episodes: int = 5
    # Recovery budget (optimizer steps at batch 16), the same for every variant and the baseline.
    recover_steps: int = 60
    # Ranking methods for the ranked levels (a list: --methods=gateprobe,block_influence).
    methods: list[str] = field(default_factory=lambda: ["gateprobe"])
    # Cut levels (a list, as `vlaprune dtr --sweep.levels`). FRACTION: that fraction of the stack's
    # blocks, the lowest-scoring; N: a count; all-but-N: every block but N; drop_half: the odd-indexed
    # blocks; keep_2: all but the first and the last.
    levels: list[str] = field(default_factory=lambda: ["drop_half", "0.5"])
    # Simulators stepped in parallel (processes).
    n_envs: int = 2
    # Offline loss on this many held-out batches of 16 (a seeded subset; 0 = every frame: 9 s more per
    # evaluation on the shipped data, 2 evaluations per measurement).
    offline_batches: int = 8
    # Instead of the sweep: copy the shipped policy and dataset to this folder (policy/, dataset/, vlm/)
    # for the first steps (docs/first-steps.md), and stop.
    export_assets: str = ""


def run(cfg: DemoConfig) -> dict[str, Any]:
    from rich.console import Console

    if not assets.available():
        raise VlapruneError(
            f"the demo assets are missing from {assets.ASSETS}; build them with "
            "scripts/build_demo_assets.py (or reinstall vlaprune)"
        )
    console = Console()
    if cfg.export_assets:
        dest = assets.export(cfg.export_assets)
        console.print(
            f"wrote {dest}: --policy.path={dest}/policy (a trained SmolVLA, four MetaWorld tasks: "
            f"{', '.join(assets.TASKS)}) --dataset.root={dest}/dataset",
            markup=False,
        )
        return {"exported": str(dest)}
    t0 = time.perf_counter()
    policy_path = assets.relocated(assets.ASSETS / "policy")
    dcfg = DTRConfig(
        policy=PolicyConfig(path=str(policy_path)),
        dataset=DatasetConfig(root=str(assets.ASSETS / "dataset")),
        env=EnvConfig(type="metaworld", task=list(assets.TASKS)),
        sweep=SweepConfig(
            components=["vision", "language", "action"], levels=cfg.levels, methods=cfg.methods, seeds=[0]
        ),
        recover=BudgetConfig(steps=cfg.recover_steps, batch_size=16, trainable="all", image_shift=3),
        eval=EpisodesConfig(
            n_episodes=cfg.eval_episodes,
            n_envs=cfg.n_envs,
            sequential=cfg.sequential,
            round_episodes=cfg.round_episodes,
            max_episodes=max(cfg.max_episodes, cfg.eval_episodes),
        ),
        probe_episodes=cfg.probe_episodes,
        holdout=0.34,
        calibration=CalibrationConfig(batches=2, batch_size=16),
        offline_batches=cfg.offline_batches,
        output_dir=cfg.output_dir,
    )
    try:
        summary = dtr(dcfg)
    finally:
        close_envs()
    html, md = report.build(cfg.output_dir)
    minutes = (time.perf_counter() - t0) / 60
    console.print(
        f"demo finished in {minutes:.1f} min: {summary['measurements']} measurements; report {html} ({md})"
    )
    for line in report.verdict(report.load(Store(cfg.output_dir))):
        console.print(f"  - {line}", markup=False)
    return {**summary, "minutes": minutes, "report": str(html)}
