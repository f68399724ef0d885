"""`vlaprune report RUN_DIR`: a self-contained HTML page (and Markdown) built from the results store alone.

Sections: verdict; anatomy; GateProbe scores per block (heatmap by component); success (Wilson 95% CI)
and offline loss against blocks removed, before and after recovery, one curve per component and method
(the asymmetry figure); Pareto plots of success against latency and parameters; language- and
vision-sensitivity tables of the baseline. Figures are PNGs embedded in the HTML (base64) and written
next to the Markdown.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from vlaprune.atomic import write_text_atomic
from vlaprune.evaluate.envs.libero import SUITE_NAMES
from vlaprune.evaluate.paired import KEEPS, LOSES, UNDECIDED
from vlaprune.experiments.figures import figures, pooled_ci
from vlaprune.experiments.results import (
    TOLERANCE,
    by_component,
    label,
    load,
    paired,
    speedups,
)
from vlaprune.experiments.store import Store


def verdict(data: dict[str, Any]) -> list[str]:
    """Plain-language findings: per component, the most blocks removed whose recovered success keeps within
    TOLERANCE of the recovered baseline by the paired 95% interval (same episodes for every model), or why
    no cut can be called harmless: every cut loses success, or the episodes are too few to tell."""
    base = data["baseline"]
    b_after = base["after"].get("success")
    if b_after is None or b_after < 0.2:
        why = (
            "no closed-loop evaluation in this run"
            if b_after is None
            else (f"the recovered baseline itself succeeds in only {b_after:.0%} of episodes")
        )
        return [
            f"No verdict on success: {why}. Compare the offline losses below; train or recover longer "
            "for a closed-loop answer."
        ]
    n_blocks = {s["name"]: s["blocks"] for s in (data["anatomy"] or {}).get("stacks", [])}
    lines, frac = [], {}
    for c, pts in sorted(by_component(data).items()):
        judged = [(p, paired(base["after"], p["m"]["after"])) for p in pts]
        judged = [(p, r) for p, r in judged if r is not None]
        keeps = [(p, r) for p, r in judged if r["verdict"] == KEEPS.format(points=f"{TOLERANCE * 100:g}")]
        if keeps:
            p, r = max(keeps, key=lambda x: x[0]["removed"])
            n = n_blocks.get(p["stack"])
            if n and p["part"] == "block":
                frac[c] = p["removed"] / n
            lines.append(_keeps(c, p, r, base, n))
        elif judged:
            lines.append(_no_keep(c, judged))
    if frac:
        most = max(frac, key=frac.get)
        lines.insert(
            0,
            f"Most redundant: {most} ({frac[most]:.0%} of its blocks removable at this budget, paired 95% "
            f"interval within {TOLERANCE:.0%} of the recovered baseline). Tested on this run's tasks, seeds "
            "and budget only.",
        )
    elif lines:
        lines.insert(0, "No component was shown to tolerate a cut at this budget and episode count.")
    if data.get("other_settings"):
        lines.append(
            f"({data['other_settings']} measurements in this store were made under other settings and are "
            "not shown.)"
        )
    return lines


def _keeps(c: str, p: dict[str, Any], r: dict[str, Any], base: dict[str, Any], n: int | None) -> str:
    """The verdict line of a component whose largest harmless cut is `p` (paired result `r`)."""
    m = p["m"]
    flops = 1 - m["cost"]["flops_chunk"] / base["cost"]["flops_chunk"]
    task = speedups(base, m, "after")[1]
    return (
        f"{c}: {p['removed']} of {n or '?'} {_what(p)} can go: {_paired_text(r)} after "
        f"recovery ({r['verdict']}; before recovery {m['before'].get('success', float('nan')):.0%}); "
        f"{flops:.0%} fewer FLOPs per action chunk, "
        f"{1 - m['cost']['params'] / base['cost']['params']:.0%} fewer parameters, select_action "
        f"{m['cost']['latency_ms']:.1f} ms vs {base['cost']['latency_ms']:.1f} ms, task speed-up "
        f"{_x(task)} after recovery."
    )


def _no_keep(c: str, judged: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """The verdict line of a component no cut of which was shown harmless: every cut loses, or undecided."""
    if all(r["verdict"] == LOSES for _, r in judged):
        p, r = min(judged, key=lambda x: x[0]["removed"])
        return (
            f"{c}: every tested cut loses success after recovery (smallest, {p['removed']} {_what(p)}: "
            f"{_paired_text(r)}) — this component is needed at this budget."
        )
    p, r = max(((p, r) for p, r in judged if r["verdict"] == UNDECIDED), key=lambda x: x[0]["removed"])
    return (
        f"{c}: {UNDECIDED} — the largest such cut ({p['removed']} {_what(p)}) gives "
        f"{_paired_text(r)}; "
        f"the interval includes both no change and a loss of more than {TOLERANCE:.0%}: "
        + (_more(r) if r.get("sequential") else "run more episodes (--eval.n_episodes) to decide.")
    )


def _what(p: dict[str, Any]) -> str:
    return (
        "blocks" if p["part"] == "block" else {"attn": "blocks' attention", "mlp": "blocks' MLPs"}[p["part"]]
    )


def _paired_text(r: dict[str, Any]) -> str:
    return (
        f"success {r['variant_rate']:.0%} vs recovered baseline {r['baseline_rate']:.0%}, paired difference "
        f"{r['difference']:+.0%} [95% {'CS' if r.get('sequential') else 'CI'} {r['ci_low']:+.0%}, "
        f"{r['ci_high']:+.0%}] over {_took(r)}"
    )


def _took(r: dict[str, Any]) -> str:
    """The episodes a verdict took: all of them (fixed count), or where the rounds stopped (sequential)."""
    if not r.get("sequential"):
        return f"{r['n']} episodes"
    where = "at the maximum" if r["verdict"] == UNDECIDED else "decided"
    return f"{r['n']} episodes ({r['episodes_per_task']} per task, {where})"


def _more(r: dict[str, Any]) -> str:
    """What an undecided sequential comparison would need (evaluate/sequential.more_needed)."""
    more = r.get("more_needed")
    if more is None:
        return "more episodes than 100x these would not decide it at the outcomes seen so far."
    return (
        f"about {more} more episodes per task would decide it if the outcomes so far held "
        f"(--eval.max_episodes={r['episodes_per_task'] + more})."
    )


def _table(headers: list[str], rows: list[list[Any]]) -> tuple[str, str]:
    md = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
    md += "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)
    h = "<table><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in headers) + "</tr>"
    h += (
        "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )
    return h, md


def build(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md (+ PNGs) into `run_dir`."""
    run_dir = Path(run_dir)
    data = load(Store(run_dir))
    v = verdict(data)
    if (data["anatomy"] or {}).get("random_weights"):
        v = [RANDOM_WEIGHTS, *v]
    sections: list[tuple[str, str, str]] = [  # (title, html, markdown)
        (
            "Verdict",
            "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in v) + "</ul>",
            "\n".join(f"- {x}" for x in v),
        )
    ]
    if data["anatomy"]:
        sections.append(("Anatomy", *_anatomy(data["anatomy"])))
    sections.append(("Measurements (same recovery budget for every row)", *_measurements(data)))
    if libero := _libero(data):
        sections.append(("LIBERO success per suite (before -> after recovery)", *libero))
    probes = data["baseline"]["before"].get("probes")
    if probes:
        rows = [[c, f"{r['mean_success']:.0%}", f"{r['change_vs_normal']:+.0%}"] for c, r in probes.items()]
        h, md = _table(["condition (baseline policy)", "mean success", "change vs normal"], rows)
        sections.append(("Language and vision sensitivity", h, md))
    sections += _figures(run_dir, figures(data))
    body = "".join(f"<h2>{html.escape(t)}</h2>{h}" for t, h, _ in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlaprune DTR report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}img{max-width:100%}</style></head><body>"
        f"<h1>Drop-Then-Recovery report</h1><p>{html.escape(HOW)}</p>{body}</body></html>"
    )
    md = (
        "# Drop-Then-Recovery report\n\n"
        + HOW
        + "\n\n"
        + "\n\n".join(f"## {t}\n\n{m}" for t, _, m in sections)
    )
    return write_text_atomic(run_dir / "report.html", page), write_text_atomic(
        run_dir / "report.md", md + "\n"
    )


HOW = (
    "How to read it: each row is one cut, fine-tuned afterwards with the same budget as the baseline. "
    "Success is the mean over tasks of closed-loop episodes (error bars: Wilson 95% interval over all "
    "episodes). Every model runs the same episodes (same task, same seed: same scene and same policy "
    "noise), so each cut is compared with the recovered baseline episode by episode: the paired "
    "difference with its Newcombe 95% interval; a cut keeps success when that interval stays above "
    f"-{TOLERANCE:.0%}, loses it when the interval is below 0, and is not distinguishable otherwise."
    " With --eval.sequential the cuts ran in rounds until that verdict was decided, and the interval is"
    " an anytime-valid 95% confidence sequence (CS, evaluate/sequential.py), valid at every round it was"
    " looked at."
)
MEASUREMENT_COLUMNS = [
    "cut (blocks removed, or whose attention / MLP was removed)",
    "success before recovery",
    "success after recovery",
    "paired change vs recovered baseline [95% CI]",
    "verdict",
    "episodes the verdict took",
    "loss before",
    "loss after",
    "latency ms",
    "params",
    "FLOPs / chunk",
    "per-action speed-up",
    "task speed-up before / after recovery",
    "inference memory MB (weights + activations)",
    "memory growth of one call MB",
]
FIGURES = {
    "gateprobe": "GateProbe scores per block",
    "asymmetry_success": "Success vs blocks removed",
    "asymmetry_loss": "Offline loss vs blocks removed",
    "pareto": "Success vs latency and parameters",
}


def _anatomy(a: dict[str, Any]) -> tuple[str, str]:
    rows = [
        [
            s["name"],
            s["blocks"],
            f"{s['params']:,}",
            f"{s['params_pct']:.1f}",
            "-" if s["flops_pct"] is None else f"{s['flops_pct']:.1f}",
            s["coupling"],
        ]
        for s in a["stacks"]
    ]
    return _table(["stack", "blocks", "params", "% params", "% FLOPs", "coupling"], rows)


def _measurements(data: dict[str, Any]) -> tuple[str, str]:
    """One row per measurement, fewest blocks removed first, compared with the recovered baseline."""
    base = data["baseline"]
    rows = [
        _measurement(base, m)
        for m in sorted(data["measures"].values(), key=lambda m: sum(m["blocks_removed"].values()))
    ]
    h, md = _table(MEASUREMENT_COLUMNS, rows)
    how = (base["cost"].get("inference_memory") or {}).get("how")
    if how:  # how the inference memory was measured (CUDA allocator peak, or weights + RSS growth on CPU)
        h, md = h + f"<p>Inference memory: {html.escape(how)}.</p>", md + f"\n\nInference memory: {how}."
    return h, md


def _measurement(base: dict[str, Any], m: dict[str, Any]) -> list[Any]:
    r = paired(base["after"], m["after"]) if m["spec"]["drops"] else None
    action, task_before = speedups(base, m, "before")
    task_after = speedups(base, m, "after")[1]
    mem = m["cost"].get("peak_memory_bytes")
    total = (m["cost"].get("inference_memory") or {}).get("total_bytes")
    took = (
        _took(r) + (f"; {_more(r)}" if r.get("sequential") and r["verdict"] == UNDECIDED else "")
        if r
        else "-"
    )
    return [
        _cut(m, m["spec"].get("part", "block")),
        _pct(m["before"]),
        _pct(m["after"]),
        f"{r['difference']:+.0%} [{r['ci_low']:+.0%}, {r['ci_high']:+.0%}]" if r else "-",
        r["verdict"] if r else "-",
        took,
        f"{m['before']['offline']['loss']:.4f}",
        f"{m['after']['offline']['loss']:.4f}",
        f"{m['cost']['latency_ms']:.1f}",
        f"{m['cost']['params']:,}",
        f"{m['cost']['flops_chunk'] / 1e6:.1f} M",
        _x(action),
        f"{_x(task_before)} / {_x(task_after)}",
        "-" if total is None else f"{total / 2**20:.0f}",
        "-" if mem is None else f"{mem / 2**20:.0f}",
    ]


def _libero(data: dict[str, Any]) -> tuple[str, str] | None:
    """Per-suite success of every measurement, before -> after recovery (the DTR paper's Table 1: Spatial,
    Object, Goal, Long and their average), when the baseline's tasks are LIBERO tasks (SUITE/ID). A suite's
    success is the mean over its tasks; a suite with no episodes says so (it is not a 0), and the average
    is over the suites that ran."""
    tasks = data["baseline"]["after"].get("tasks") or {}
    if not tasks or not all(t.partition("/")[0].startswith("libero_") for t in tasks):
        return None
    extra = sorted({t.partition("/")[0] for t in tasks} - set(SUITE_NAMES))  # e.g. libero_90
    suites = [*SUITE_NAMES, *extra]
    rows = []
    for m in sorted(data["measures"].values(), key=lambda m: sum(m["blocks_removed"].values())):
        before, after = (_suite_rates(m[phase].get("tasks") or {}, suites) for phase in ("before", "after"))
        cells = [_arrow(before[s], after[s]) for s in [*suites, "average"]]
        rows.append([_cut(m, m["spec"].get("part", "block")), *cells])
    names = [SUITE_NAMES.get(s, s) for s in suites]
    return _table(["cut", *names, "average (suites run)"], rows)


def _suite_rates(tasks: dict[str, Any], suites: list[str]) -> dict[str, float | None]:
    """{suite: mean success over its tasks, or None without episodes} and their unweighted "average"."""
    by: dict[str, list[float]] = {}
    for t, v in tasks.items():
        if v.get("episodes"):
            by.setdefault(t.partition("/")[0], []).append(v["success_rate"])
    out: dict[str, float | None] = {s: sum(by[s]) / len(by[s]) if s in by else None for s in suites}
    ran = [v for v in out.values() if v is not None]
    return out | {"average": sum(ran) / len(ran) if ran else None}


def _arrow(before: float | None, after: float | None) -> str:
    if before is None and after is None:
        return "no episodes"
    show = lambda v: "no episodes" if v is None else f"{v:.0%}"  # noqa: E731
    return f"{show(before)} -> {show(after)}"


def _figures(run_dir: Path, figs: dict[str, bytes]) -> list[tuple[str, str, str]]:
    """A section per figure: written next to the Markdown, embedded (base64) in the HTML."""
    out = []
    for name, title in FIGURES.items():
        if name in figs:
            (run_dir / f"report_{name}.png").write_bytes(figs[name])
            b64 = base64.b64encode(figs[name]).decode()
            out.append(
                (
                    title,
                    f'<img alt="{name}" src="data:image/png;base64,{b64}">',
                    f"![{name}](report_{name}.png)",
                )
            )
    return out


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


RANDOM_WEIGHTS = (
    "computed on a model with random weights (a built-in tiny:NAME model, never fine-tuned): these numbers "
    "test the machinery and say nothing about a trained policy"
)
IN_PLACE = {"kv_only": "keep-K/V", "skipped": "action-only"}


def _cut(m: dict[str, Any], part: str) -> str:
    """A measurement's cut as the report names it: stack, blocks, and how they went when in place
    ("language [1, 3] (keep-K/V)", "action [1, 3] (action-only)"); partners a pair drop took are listed."""
    plan = m.get("plan") or {}
    how = {s: name for key, name in IN_PLACE.items() for s, v in (plan.get(key) or {}).items() if v}
    drops = dict(m["spec"]["drops"])
    for s, v in (plan.get("drops") or {}).items():  # whole blocks, partners included (pair mode)
        if v and s not in drops:
            drops[s] = v
    cut = "; ".join(
        f"{label(s, part)} {v}" + (f" ({how[s]})" if s in how else "") for s, v in drops.items() if v
    )
    return cut or "none (baseline)"


def _pct(ev: dict[str, Any]) -> str:
    if "success" not in ev:
        return "-"
    lo, hi = pooled_ci(ev)
    return f"{ev['success']:.0%} [{lo:.0%}, {hi:.0%}]"
