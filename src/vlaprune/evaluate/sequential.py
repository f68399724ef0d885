"""Sequential paired verdicts: compare a variant with its baseline on the same episodes, round after round,
and stop as soon as the comparison is decided, with an error rate that holds however often it is looked at.

Why: a fixed episode count spends as many episodes on a cut that obviously fails (-67 points) as on a close
call, and re-checking a fixed-n interval after every round (evaluate/paired.py's Newcombe interval) inflates
its error rate with every look (tests/evaluate/test_sequential.py measures it). An anytime-valid confidence
sequence (CS) stays valid at every look, so episodes can run until the verdict is known.

Data: paired outcomes per episode (same task, same seed), d = y_variant - y_baseline in {-1, 0, 1}; the
target is Delta = variant rate - baseline rate, the mean of d (mean over tasks, every task has the same
episodes). Episodes are taken in *blocks*, one episode of every task at the same seed offset (block j =
seed `seed + j` of each task), and looks happen at the end of a round of blocks.

Method: the betting confidence sequence of Waudby-Smith & Ramdas, "Estimating means of bounded random
variables by betting", JRSS-B 86(1), 2024 (arXiv 2010.09686): their hedged capital process with
predictable plug-in bets, truncation c = 3/4, on x = (d + 1) / 2 in [0, 1], m0 = (Delta0 + 1) / 2:
  K+_t(m0) = prod_i (1 + l+_i (x_i - m0)),   l+_i = min(l_i, c / m0)         (evidence that Delta > Delta0)
  K-_t(m0) = prod_i (1 - l-_i (x_i - m0)),   l-_i = min(l_i, c / (1 - m0))   (evidence that Delta < Delta0)
  l_i = sqrt(2 log(2 / alpha) / (s2_{i-1} t log(1 + t))),  s2_t = (1/4 + sum_{j<=t} (x_j - mu_j)^2) / (t + 1),
  mu_t = (1/2 + sum_{j<=t} x_j) / (t + 1),  t = the episodes seen before the bet's block, plus one.
Delta0 is excluded from the 95% CS as soon as K+ or K- reaches 2 / alpha (alpha = 0.05): each is a
nonnegative supermartingale under its one-sided null, so by Ville's inequality it ever reaches 2 / alpha
with probability at most alpha / 2, whenever one looks. Our one change: a bet stays fixed within a block,
so the block's factors multiply to at most exp(l * sum_k (m_k - m0)) <= 1 in expectation when the tasks'
means m_k differ but average to m0 or less (the null on the mean over tasks); the capital is a
supermartingale at block ends, where the looks are. K+(m0) grows as m0 falls and K-(m0) as m0 rises (every
factor is monotone in m0), so the CS is an interval [ci_low, ci_high], found on a grid of Delta0 (step 1/1000,
reported half a step beyond the last value inside) and intersected over the looks.

Verdicts, as in evaluate/paired.py, checked at every look, the first decided one stops the variant:
  1. ci_low >= -tol  (K+ at Delta0 = -tol reached 2 / alpha)  -> "keeps success within N points"
  2. ci_high < 0     (K- at Delta0 = 0 reached 2 / alpha)      -> "loses success"
  3. otherwise, at the last allowed look                       -> "not distinguishable at this episode count"
The two nulls (Delta <= -tol, Delta >= 0) are disjoint, so whatever the truth, the chance of a wrong verdict
is at most alpha / 2 = 2.5%, the same bound as the fixed-n interval at a single look.
An undecided comparison also reports `more_needed`: how many more episodes per task the rule would need if
the outcomes observed so far kept repeating (the observed blocks replayed in order), a planning estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlaprune.configs import looks  # noqa: F401  (re-exported: the episodes at each look)
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.paired import KEEPS, LOSES, UNDECIDED, _keyed

TRUNCATION = 0.75  # c: the largest bet is c / m0 (Waudby-Smith & Ramdas use 1/2 or 3/4)
GRID = 1000  # CS bounds on a grid of Delta0 with step 1 / GRID


def bets(x: np.ndarray, tasks: int, confidence: float = 0.95) -> np.ndarray:
    """The predictable plug-in bets l_i (before truncation), fixed within blocks of `tasks` episodes.
    x: (..., n) in [0, 1], n a multiple of `tasks`; the same shape back."""
    alpha = 1 - confidence
    n = x.shape[-1]
    t = np.arange(1, n + 1)
    mu = (0.5 + np.cumsum(x, -1)) / (t + 1)
    s2 = (0.25 + np.cumsum((x - mu) ** 2, -1)) / (t + 1)
    s2_prev = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), s2[..., :-1]], -1)
    lam = np.sqrt(2 * math.log(2 / alpha) / (s2_prev * t * np.log1p(t)))
    first = (np.arange(n) // tasks) * tasks  # the bet of a block is the one of its first episode
    return lam[..., first]


def log_capital(x: np.ndarray, lam: np.ndarray, delta0, side: int) -> np.ndarray:
    """log K+ (side +1) or log K- (side -1) after every episode, at Delta0 (scalar or broadcastable)."""
    m0 = (np.asarray(delta0, dtype=float) + 1) / 2
    if side > 0:
        f = 1 + np.minimum(lam, TRUNCATION / np.maximum(m0, 1e-12)) * (x - m0)
    else:
        f = 1 - np.minimum(lam, TRUNCATION / np.maximum(1 - m0, 1e-12)) * (x - m0)
    return np.cumsum(np.log(f), -1)


def decisions(
    d: np.ndarray, tasks: int, at: Sequence[int], tol: float = 0.05, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """(keeps, loses) booleans of shape (..., len(at)): whether each rule has fired by each look. `d`:
    (..., n) paired differences in block order; `at`: episodes per task at each look. Vectorised over the
    leading axes (the simulation tests run thousands of streams at once)."""
    x = (np.asarray(d, dtype=float) + 1) / 2
    lam = bets(x, tasks, confidence)
    ends = np.asarray(at) * tasks - 1
    bar = math.log(2 / (1 - confidence))
    keeps = np.maximum.accumulate(log_capital(x, lam, -tol, +1)[..., ends] >= bar, -1)
    loses = np.maximum.accumulate(log_capital(x, lam, 0.0, -1)[..., ends] >= bar, -1)
    return keeps, loses


def first_verdict(keeps: np.ndarray, loses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(verdict code, look index) per stream: +1 keeps, -1 loses, 0 undecided at the last look; keeps wins a
    tie (paired.py's order). Shapes (..., looks) -> (...)."""
    decided = keeps | loses
    stop = np.where(decided.any(-1), decided.argmax(-1), decided.shape[-1] - 1)
    k = np.take_along_axis(keeps, stop[..., None], -1)[..., 0]
    lo = np.take_along_axis(loses, stop[..., None], -1)[..., 0]
    return np.where(k, 1, np.where(lo, -1, 0)), stop


def bounds(d: np.ndarray, tasks: int, at: Sequence[int], confidence: float = 0.95) -> tuple[float, float]:
    """The CS [ci_low, ci_high] of one stream after its last look, intersected over the looks `at`."""
    x = (np.asarray(d, dtype=float) + 1) / 2
    lam = bets(x, tasks, confidence)
    ends = np.asarray(at) * tasks - 1
    grid = np.linspace(-1, 1, 2 * GRID + 1)[:, None]  # (G, 1): Delta0 = -1, -0.999, ..., 1
    bar = math.log(2 / (1 - confidence))
    out_low = (log_capital(x, lam, grid, +1)[:, ends] >= bar).any(-1)  # Delta0 excluded from below
    out_high = (log_capital(x, lam, grid, -1)[:, ends] >= bar).any(-1)
    inside = grid[~out_low & ~out_high, 0]
    if inside.size == 0:  # cannot happen for a valid CS at 1/1000 resolution; report the estimate
        mean = float(np.mean(d))
        return mean, mean
    half = 0.5 / GRID  # the bound lies between the last excluded and the first included grid point
    return max(-1.0, float(inside.min()) - half), min(1.0, float(inside.max()) + half)


def blocks(
    base_records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    variant_records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pair the variant's episodes with the baseline's same (task, seed), in block order (seed, then task):
    (baseline successes, variant successes, tasks per block). The baseline may hold more seeds than the
    variant (it serves every variant); the variant's seeds must form complete blocks."""
    base, var = _keyed(base_records, "baseline"), _keyed(variant_records, "variant")
    missing = sorted(var.keys() - base.keys(), key=str)
    if missing:
        raise VlapruneError(
            f"{len(missing)} variant episodes have no baseline episode (task, seed) {missing[:3]}; "
            "evaluate the baseline on the same seeds"
        )
    tasks = sorted({str(t) for t, _ in var})
    seeds = sorted({s for _, s in var})
    if len(var) != len(tasks) * len(seeds):
        raise VlapruneError(
            f"the variant's episodes do not form complete blocks: {len(var)} episodes, {len(tasks)} tasks x "
            f"{len(seeds)} seeds; every task needs the same seeds"
        )
    keys = sorted(var, key=lambda k: (k[1], str(k[0])))
    return np.array([base[k] for k in keys]), np.array([var[k] for k in keys]), len(tasks)


def compare(
    base_records,
    variant_records,
    at: Sequence[int],
    tol: float = 0.05,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The sequential paired comparison of a variant's episodes with the baseline's same (task, seed), looked
    at after `at[i]` episodes per task (`looks`); the variant's episodes must reach the last look it ran.
    Returns paired.compare's keys (n, rates, difference, b, c, ci_low / ci_high: the confidence sequence)
    plus `verdict`, `sequential: True`, `episodes_per_task` (where it stopped), `looks` and, when undecided,
    `more_needed` (episodes per task, an estimate; None when not decided within 100x the episodes)."""
    if tol < 0:
        raise VlapruneError(f"tolerance must be >= 0 (a rate, 0.05 = 5 points), got {tol}")
    y0, y1, tasks = blocks(base_records, variant_records)
    per_task = len(y1) // tasks
    seen = [a for a in at if a <= per_task] or [per_task]
    d = y1.astype(float) - y0.astype(float)
    keeps, loses = decisions(d, tasks, seen, tol, confidence)
    code, stop = first_verdict(keeps, loses)
    used = seen[int(stop)]
    d, y0, y1 = d[: used * tasks], y0[: used * tasks], y1[: used * tasks]
    low, high = bounds(d, tasks, seen[: int(stop) + 1], confidence)
    verdict = {1: KEEPS.format(points=f"{round(tol * 100, 6):g}"), -1: LOSES, 0: UNDECIDED}[int(code)]
    n = len(d)
    b, c = int(np.sum(y0 & ~y1)), int(np.sum(y1 & ~y0))
    return {
        "n": n,
        "baseline_successes": int(y0.sum()),
        "variant_successes": int(y1.sum()),
        "b": b,
        "c": c,
        "baseline_rate": float(y0.mean()),
        "variant_rate": float(y1.mean()),
        "difference": (c - b) / n,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "verdict": verdict,
        "sequential": True,
        "episodes_per_task": used,
        "tasks": tasks,
        "looks": list(seen[: int(stop) + 1]),
        "more_needed": None if code else more_needed(d, tasks, seen, tol, confidence),
    }


def more_needed(
    d: np.ndarray, tasks: int, at: Sequence[int], tol: float = 0.05, confidence: float = 0.95
) -> int | None:
    """Episodes per task beyond the last look until the rule decides, if the observed blocks kept repeating
    in order (rounds as between the last two looks); None when not within 100x the episodes so far."""
    n = len(d) // tasks
    step = at[-1] - at[-2] if len(at) > 1 else at[-1]
    reps = 100
    longer = np.tile(d, reps)
    ahead = list(range(n + step, n * reps + 1, step))
    keeps, loses = decisions(longer, tasks, ahead, tol, confidence)
    decided = keeps | loses
    return int(ahead[int(decided.argmax())] - n) if decided.any() else None
