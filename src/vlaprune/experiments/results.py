"""The results of a DTR run, read from its store: the rows of one set of settings, the curves per component
and method, paired comparisons with the recovered baseline, episode lengths and speed-ups. The report,
its figures and the demo read results through these functions only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vlaprune.errors import VlapruneError
from vlaprune.evaluate import sequential
from vlaprune.evaluate.paired import compare, pair_episodes
from vlaprune.evaluate.paired import verdict as paired_verdict
from vlaprune.experiments.store import Store

TOLERANCE = 0.05  # "keeps success": the paired 95% interval stays above -5 points of the recovered baseline


def load(store: Store) -> dict[str, Any]:
    """The rows of one set of settings (`dtr.settings`): those of the newest measurement when the store
    holds rows measured under several (e.g. a rerun with more episodes); the others are counted, not shown."""
    rows = store.rows()
    if not rows:
        raise VlapruneError(
            f"{store.root} has no results rows; run `vlaprune dtr` (or `vlaprune demo`) first"
        )
    by_kind: dict[str, list] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    newest = max(by_kind["measure"], key=lambda r: r.get("written_at", ""), default=None)
    sid = (newest or {}).get("spec", {}).get("settings_id")
    measures = {r["id"]: r for r in by_kind["measure"] if r["spec"].get("settings_id") == sid}
    base = [r for r in measures.values() if not r["spec"]["drops"]]
    if not base:
        raise VlapruneError(
            f"{store.root}: the baseline measurement is missing; rerun the sweep to finish it"
        )
    setting = base[0]["spec"].get("settings") or {}
    scores = [
        r
        for r in by_kind["scores"]
        if all(setting.get(k) == v for k, v in (r["spec"].get("settings") or {}).items())
    ]
    return {
        "anatomy": by_kind["anatomy"][0]["anatomy"] if by_kind["anatomy"] else None,
        "scores": scores,
        "plans": [p for p in by_kind["plan"] if p["spec"].get("settings_id") == sid],
        "measures": measures,
        "baseline": base[0],
        "other_settings": len(by_kind["measure"]) - len(measures),
    }


def paired(base_ev: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any] | None:
    """Paired comparison (evaluate/paired.py) of a measurement's closed-loop episodes with the baseline's,
    episode by episode (same task, same seed): difference, Newcombe 95% interval, McNemar p, verdict; for a
    measurement evaluated in rounds, the sequential verdict (evaluate/sequential.py) with its confidence
    sequence and where it stopped. None without per-episode records (no closed loop in the run)."""

    def records(e):
        tasks = e.get("tasks") or {}
        if not tasks or any("episodes_detail" not in t for t in tasks.values()):
            return None
        return {name: t["episodes_detail"] for name, t in tasks.items()}

    b, v = records(base_ev), records(ev)
    if b is None or v is None:
        return None
    if ev.get("sequential"):  # measured in rounds (--eval.sequential): the anytime-valid rule
        seq = ev["sequential"]
        return sequential.compare(seq["baseline_episodes"], v, seq["looks"], TOLERANCE)
    result = compare(*pair_episodes(b, v))
    return {**result, "verdict": paired_verdict(result, TOLERANCE)}


def curves(data: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(component, method) -> points sorted by blocks removed: before/after success and loss. Sublayer cuts
    are their own components, "language attn-only" / "language mlp-only" (`label`)."""
    base = data["baseline"]
    out: dict[tuple[str, str], list] = defaultdict(list)
    for p in data["plans"]:
        m = data["measures"].get(p["measurement"])
        if m is None:
            continue
        c, method, part = p["spec"]["component"], p["spec"]["method"], p["spec"].get("part", "block")
        out[(label(c, part), method)].append(
            {
                "removed": len(p["drops"].get(c, [])),
                "level": p["spec"]["level"],
                "drops": p["drops"],
                "stack": c,
                "part": part,
                "m": m,
            }
        )
    for key in out:
        out[key] = [{"removed": 0, "level": "0", "drops": {}, "m": base}] + sorted(
            out[key], key=lambda x: x["removed"]
        )
    return out


def label(component: str, part: str = "block") -> str:
    """How a cut's component is named in the report: the stack, or e.g. "language mlp-only"."""
    return component if part == "block" else f"{component} {part}-only"


def mean_steps(ev: dict[str, Any]) -> float | None:
    """Mean episode length (simulator steps) over every closed-loop episode of an evaluation."""
    steps = [r["steps"] for t in (ev.get("tasks") or {}).values() for r in t.get("episodes_detail", [])]
    return sum(steps) / len(steps) if steps else None


def speedups(base: dict[str, Any], m: dict[str, Any], phase: str) -> tuple[float | None, float | None]:
    """(per-action speed-up, task speed-up) of measurement `m` against the baseline, `phase` "before" or
    "after" recovery. Per action: the unpruned model's select_action latency / the cut model's, timed in
    interleaved rounds within the cut's own measurement (rows measured before that: the two rows' medians).
    Task: per-action speed-up x baseline mean steps per episode / the cut model's (a cut that needs more
    steps per task can be slower overall although each action is faster; the DTR paper's definition)."""
    ratio = m["cost"].get("latency_ratio_vs_unpruned")  # timed beside the unpruned model: preferred
    lat0, lat = base["cost"].get("latency_ms"), m["cost"].get("latency_ms")
    action = 1 / ratio if ratio else (lat0 / lat if lat0 and lat else None)
    s0, s = mean_steps(base[phase]), mean_steps(m[phase])
    task = action * s0 / s if action and s0 and s else None
    return action, task


def by_component(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """component -> its cuts (every method's, each measurement once), without the baseline point."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (c, _), pts in curves(data).items():
        for p in pts[1:]:
            out[c][p["m"]["id"]] = p
    return {c: sorted(v.values(), key=lambda p: p["removed"]) for c, v in out.items()}
