"""`--eval.sequential` in a DTR sweep: after `measure_one` evaluated a recovered cut on the first
`--eval.n_episodes` per task, its comparison with the recovered baseline continues in rounds until decided
(evaluate/rounds.py). The cut's row gets every episode it ran and, under `after.sequential`, the looks and the
baseline's episodes on the same seeds, so the report recomputes the verdict from the row alone. The
baseline's extra episodes are rows of kind "episodes" (one per extension, never rewritten), which later cuts
and reruns reuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlaprune.configs import EpisodesConfig, PolicyConfig
from vlaprune.data import Data
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.closed_loop import summarize
from vlaprune.evaluate.rounds import Records, merged, on_seeds, until_decided
from vlaprune.experiments.store import Store, row_id


def baseline_records(store: Store, base_id: str) -> Records:
    """The recovered baseline's closed-loop episodes: its row's, plus every stored extension."""
    if not store.has(base_id):
        raise VlapruneError(
            "--eval.sequential pairs every cut with the recovered baseline's episodes, and the baseline is "
            "not in the store yet: measure it first (run the shard that holds it, or without --shard)"
        )
    recs = {t: v["episodes_detail"] for t, v in store.get(base_id)["after"]["tasks"].items()}
    for row in store.rows("episodes"):
        if row["spec"]["measurement"] == base_id:
            recs = merged(recs, row["episodes"])
    return recs


def episodes_of(path: Path, cfg: Any, data: Data):
    """run(seed, n) -> {task: records} of the checkpoint at `path` (loaded on first use)."""
    loaded: list = []

    def run(seed: int, n: int) -> Records:
        from vlaprune.evaluate.run import closed_loop
        from vlaprune.policy import load_policy

        if not (path / "config.json").is_file():
            raise VlapruneError(f"{path}: the checkpoint to evaluate further is missing (measured elsewhere)")
        if not loaded:
            loaded.append(load_policy(PolicyConfig(path=str(path), device=cfg.policy.device)).module)
        eps = EpisodesConfig(n_episodes=n, seed=seed, n_envs=cfg.eval.n_envs)
        res = closed_loop(loaded[0], *data.processors(), cfg.env, eps)["normal"]
        return {t: v["episodes_detail"] for t, v in res["tasks"].items()}

    return run


def continue_after(
    cfg: Any, store: Store, base_id: str, work: Path, result: dict[str, Any], *, data: Data, chash: str
) -> dict[str, Any]:
    """`result` (measure_one's) with the after-recovery evaluation continued in rounds until decided."""
    run_base = episodes_of(Path(cfg.output_dir) / "work" / base_id / "recover" / "final", cfg, data)

    def base_more(seed: int, n: int) -> Records:
        recs = run_base(seed, n)
        spec = {"kind": "episodes", "measurement": base_id, "phase": "after", "seed": seed, "n": n}
        store.put(row_id(spec), {"kind": "episodes", "spec": spec, "episodes": recs}, chash)
        return recs

    after = result["after"]
    variant = {t: v["episodes_detail"] for t, v in after["tasks"].items()}
    run_variant = episodes_of(work / "recover" / "final", cfg, data)
    base = baseline_records(store, base_id)
    variant, base, _ = until_decided(run_variant, base_more, base, variant, cfg.eval)
    tasks = {t: {**summarize(recs), "episodes_detail": recs} for t, recs in variant.items()}
    sequential = {"looks": cfg.eval.looks(), "baseline_episodes": on_seeds(base, variant)}
    success = sum(v["success_rate"] for v in tasks.values()) / len(tasks)
    return {**result, "after": {**after, "tasks": tasks, "success": success, "sequential": sequential}}


def _module_episodes(module, judge: Any):
    """run(seed, n) -> {task: records} of a model in memory, with the judge's processors and env."""

    def run(seed: int, n: int) -> Records:
        from vlaprune.evaluate.run import closed_loop

        eps = EpisodesConfig(n_episodes=n, seed=seed, n_envs=judge.cfg.eval.n_envs)
        res = closed_loop(module, *judge.pre_post, judge.cfg.env, eps)["normal"]
        return {t: v["episodes_detail"] for t, v in res["tasks"].items()}

    return run


def units_in_rounds(judge: Any, original, pruned, row: dict[str, Any], base: Records) -> Records:
    """`vlaprune prune-units --eval.sequential`: continue a pruned model's closed loop (`row`, the Judge's
    measurement, updated in place: episodes, success, its Wilson interval, `success_paired`) in rounds until
    its paired verdict against the unpruned model is decided. `base`: the unpruned model's episodes so far;
    returns them, extended, for the next pruned model."""
    from vlaprune.evaluate.closed_loop import wilson

    variant = {t: v["episodes_detail"] for t, v in row["success_tasks"].items()}
    run_v, run_b = _module_episodes(pruned.module, judge), _module_episodes(original.module, judge)
    variant, base, result = until_decided(run_v, run_b, base, variant, judge.cfg.eval)
    row["success_tasks"] = {t: {**summarize(recs), "episodes_detail": recs} for t, recs in variant.items()}
    k = sum(v["successes"] for v in row["success_tasks"].values())
    n = sum(v["episodes"] for v in row["success_tasks"].values())
    row["success"] = sum(v["success_rate"] for v in row["success_tasks"].values()) / len(variant)
    row["success_ci95"] = list(wilson(k, n))
    row["success_paired"] = result
    return base
