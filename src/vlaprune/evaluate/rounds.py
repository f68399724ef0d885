"""Closed-loop episodes in rounds until a variant's paired comparison with its baseline is decided
(`--eval.sequential`; the rule and its guarantees are in evaluate/sequential.py).

    variant, base, result = until_decided(run_variant, run_base, base_records, variant_records, episodes)

`run_variant(seed, n)` / `run_base(seed, n)` return {task: [episode records]} for seeds seed .. seed + n - 1
of every task (closed_loop on those seeds, or anything else: the tests inject outcomes). Both start from the
records they already hold (the first `--eval.n_episodes` per task); a round adds `--eval.round_episodes`
seeds per task to the variant and, where it has not run them yet, to the baseline. Since an episode is a
function of (policy, env, task, seed), the baseline's episodes serve every variant and a later extension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlaprune.configs import EpisodesConfig
from vlaprune.errors import VlapruneError
from vlaprune.evaluate import sequential
from vlaprune.evaluate.paired import UNDECIDED

Records = dict[str, list[dict[str, Any]]]


def per_task(records: Records) -> int:
    """Episodes every task has (the seeds seed, seed + 1, ... without gaps are assumed)."""
    counts = {len(v) for v in records.values()}
    if len(counts) != 1:
        raise VlapruneError(f"tasks hold different episode counts {sorted(counts)}: rounds need equal seeds")
    return counts.pop()


def merged(records: Records, more: Records) -> Records:
    """`records` and `more` per task, in seed order (an episode already there by seed is not repeated)."""
    out = {t: list(v) for t, v in records.items()}
    for t, recs in more.items():
        have = {r["seed"] for r in out.setdefault(t, [])}
        out[t] = sorted(out[t] + [r for r in recs if r["seed"] not in have], key=lambda r: r["seed"])
    return out


def until_decided(
    run_variant: Callable[[int, int], Records],
    run_base: Callable[[int, int], Records],
    base: Records,
    variant: Records,
    episodes: EpisodesConfig,
    tol: float = 0.05,
) -> tuple[Records, Records, dict[str, Any]]:
    """Extend `variant` (and `base` where needed) look by look until the sequential verdict is decided or
    `--eval.max_episodes` is reached. Returns (variant records, baseline records, sequential result)."""
    at = episodes.looks()
    result: dict[str, Any] = {}
    for look in at:
        n = per_task(variant)
        if n < look:
            variant = merged(variant, run_variant(episodes.seed + n, look - n))
        nb = per_task(base)
        if nb < look:
            base = merged(base, run_base(episodes.seed + nb, look - nb))
        result = sequential.compare(base, variant, at, tol)
        if result["verdict"] != UNDECIDED:
            break
    return variant, base, result


def on_seeds(records: Records, like: Records) -> Records:
    """The episodes of `records` whose (task, seed) `like` has: the baseline's side of a comparison."""
    seeds = {t: {r["seed"] for r in v} for t, v in like.items()}
    return {t: [r for r in records[t] if r["seed"] in seeds[t]] for t in like}
