"""Paired comparison of two models' closed-loop success on the same episodes (same tasks, same seeds).

Why paired: when a baseline and a pruned variant run the very same episodes (same scene per seed), most
episodes are solved by both or by neither; only the discordant episodes carry information about the
difference. A paired analysis uses that and gives a much narrower interval than comparing two independent
success rates.

Notation (one episode = one pair of outcomes):
  both    = baseline success and variant success      neither = both fail
  b       = baseline success, variant failure          c       = baseline failure, variant success
  difference = variant rate - baseline rate = (c - b) / n   (negative: the variant loses success)

Confidence interval: Newcombe's hybrid score interval for the difference of paired proportions ("method 10"
of Newcombe, Statistics in Medicine 17:2635-2650, 1998; Fagerland, Lydersen & Laake call it Newcombe's
square-and-add interval). With p1, p2 the two marginal rates (here variant, baseline), [l1, u1] and
[l2, u2] their Wilson score intervals (no continuity correction) and phi the correlation of the pair:
  lower = (p1 - p2) - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
  upper = (p1 - p2) + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)
phi = (A D - B C) / sqrt(E F G H) over the 2x2 table (A = both, D = neither, B, C the discordant cells,
E, F, G, H its four marginal totals), with the paper's corrections: phi = 0 when a marginal total is 0, and
A D - B C is replaced by max(A D - B C - n/2, 0) when it is positive (negative values are used as they are).

Test: the exact (conditional) McNemar test, a two-sided binomial test of b successes in b + c trials with
p = 1/2; p = 1 when there is no discordant episode.

Verdict at a tolerance of `tol` (a rate: 0.05 = 5 points), from the interval [lower, upper] alone:
  1. lower >= -tol             -> "keeps success within N points": with 95% confidence the variant loses at
                                  most tol (a non-inferiority claim; it covers "better" and "the same").
  2. otherwise, upper < 0      -> "loses success": the variant is significantly worse than the baseline and
                                  a loss of more than tol cannot be excluded. (upper < -tol, "worse by more
                                  than tol for sure", is a special case; it needs many more episodes, and a
                                  significant loss that may exceed the tolerance already fails the claim.)
  3. otherwise                 -> "not distinguishable at this episode count": the interval contains 0 and
                                  reaches below -tol, so more episodes are needed to decide.
Rule 1 is checked first: a loss that is significant but certainly smaller than tol keeps success within tol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

from vlaprune.errors import VlapruneError

KEEPS = "keeps success within {points} points"
LOSES = "loses success"
UNDECIDED = "not distinguishable at this episode count"


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for `successes` out of `n` (n > 0)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired_ci(
    both: int, only_first: int, only_second: int, neither: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's (1998) method-10 interval for p_first - p_second from a paired 2x2 table of counts.

    `only_first` counts pairs where the first outcome succeeded and the second failed, `only_second` the
    reverse. Why this method: unlike the Wald interval it behaves well at the small counts and the rates
    near 0 or 1 that closed-loop evaluations produce, and it needs no iteration.
    """
    a, b, c, d = both, only_first, only_second, neither
    if min(a, b, c, d) < 0:
        raise VlapruneError(f"paired counts must be >= 0, got {a}, {b}, {c}, {d}")
    n = a + b + c + d
    if n == 0:
        raise VlapruneError("no episodes to compare: a paired interval needs at least one episode")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        phi = 0.0
    else:
        cross = a * d - b * c
        if cross > 0:
            cross = max(cross - n / 2, 0.0)
        phi = cross / math.sqrt(margins)
    diff = p1 - p2
    lower = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, lower), min(1.0, upper)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: binomial test of b out of b + c discordant pairs at p = 1/2.

    Computed with exact integers (any episode count); 1.0 when there are no discordant pairs.
    """
    if b < 0 or c < 0:
        raise VlapruneError(f"discordant counts must be >= 0, got {b}, {c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**m)


def compare(baseline: Sequence[bool], variant: Sequence[bool], confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of per-episode successes of a baseline and a variant on the same episodes.

    `baseline[i]` and `variant[i]` must be the same episode (same task and seed). Returns n, the successes
    of each, the discordant counts b (baseline only) and c (variant only), the rates, their difference
    (variant - baseline), its Newcombe method-10 interval (`ci_low`, `ci_high`) and the exact McNemar p.
    """
    if len(baseline) != len(variant):
        raise VlapruneError(
            f"paired comparison needs the same episodes: {len(baseline)} baseline vs {len(variant)} variant"
        )
    n = len(baseline)
    if n == 0:
        raise VlapruneError("no episodes to compare: a paired interval needs at least one episode")
    pairs = [(bool(x), bool(y)) for x, y in zip(baseline, variant)]
    both = sum(x and y for x, y in pairs)
    b = sum(x and not y for x, y in pairs)
    c = sum(y and not x for x, y in pairs)
    neither = n - both - b - c
    low, high = newcombe_paired_ci(both, c, b, neither, confidence)  # first = variant, second = baseline
    return {
        "n": n,
        "baseline_successes": both + b,
        "variant_successes": both + c,
        "b": b,
        "c": c,
        "baseline_rate": (both + b) / n,
        "variant_rate": (both + c) / n,
        "difference": (c - b) / n,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "mcnemar_p": mcnemar_exact_p(b, c),
    }


def verdict(result: Mapping[str, Any], tol: float = 0.05) -> str:
    """One of three verdicts for a `compare` result at tolerance `tol` (a rate; the rule is in the module
    docstring): "keeps success within N points", "loses success", "not distinguishable at this episode
    count"."""
    if tol < 0:
        raise VlapruneError(f"tolerance must be >= 0 (a rate, 0.05 = 5 points), got {tol}")
    if result["ci_low"] >= -tol:
        return KEEPS.format(points=f"{round(tol * 100, 6):g}")
    if result["ci_high"] < 0:
        return LOSES
    return UNDECIDED


def _keyed(records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]], side: str):
    """{(task, seed): success} from a list of episode records or a {task: [records]} mapping."""
    groups = records.items() if isinstance(records, Mapping) else [(None, records)]
    out: dict[tuple[str | None, int], bool] = {}
    for task, recs in groups:
        for rec in recs:
            if "seed" not in rec or "success" not in rec:
                raise VlapruneError(f"{side} episode record without 'seed' and 'success': {dict(rec)!r}")
            key = (task if task is not None else rec.get("task"), int(rec["seed"]))
            if key in out:
                raise VlapruneError(f"{side} has episode (task, seed) = {key} twice")
            out[key] = bool(rec["success"])
    return out


def pair_episodes(
    base_records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    variant_records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
) -> tuple[list[bool], list[bool]]:
    """Pair two models' episodes by (task, seed) so that `compare(*pair_episodes(base, variant))` works.

    Each side is a list of episode dicts {"seed": int, "success": bool, ...} (an optional "task" key names
    the task) or a {task: [episode dicts]} mapping. Returns (baseline successes, variant successes) in
    (task, seed) order. Raises VlapruneError when the two sides do not hold the same episodes: a paired
    comparison is only valid on the same scenes.
    """
    base, var = _keyed(base_records, "baseline"), _keyed(variant_records, "variant")
    if base.keys() != var.keys():
        only_b, only_v = sorted(base.keys() - var.keys(), key=str), sorted(var.keys() - base.keys(), key=str)
        raise VlapruneError(
            f"episodes do not pair: {len(only_b)} (task, seed) only in the baseline {only_b[:3]}, "
            f"{len(only_v)} only in the variant {only_v[:3]}; evaluate both models on the same seeds"
        )
    keys = sorted(base, key=lambda k: (str(k[0]), k[1]))
    return [base[k] for k in keys], [var[k] for k in keys]
