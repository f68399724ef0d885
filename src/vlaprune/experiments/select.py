"""The variant a DTR run's verdict picks, exported as a checkpoint lerobot's tools load.

`select(data)`: among the measured cuts whose recovered success keeps within TOLERANCE of the recovered
baseline by the paired 95% interval (the report's "keeps success" verdict), the one with the fewest
parameters (ties: fewer FLOPs per action chunk, then lower latency). None when no cut keeps success (or the
run had no closed loop).

`export(run_dir)` copies that variant's recovered checkpoint to `<run_dir>/selected/` (the plugin format or
the family's own, as vlaprune saved it: `lerobot-train` / `lerobot-eval --policy.path=<run_dir>/selected`)
with `selection.json` beside it: the cut, its plan, cost, success before / after recovery and the paired
comparison with the recovered baseline. Written atomically; an existing selected/ is replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vlaprune.atomic import atomic_dir
from vlaprune.evaluate.paired import KEEPS
from vlaprune.experiments.results import TOLERANCE, load, paired
from vlaprune.experiments.store import Store


def select(data: dict[str, Any]) -> tuple[dict, dict] | None:
    """(measurement row, paired comparison) of the smallest cut that keeps success, or None."""
    base = data["baseline"]
    keeps = KEEPS.format(points=f"{TOLERANCE * 100:g}")
    found = []
    for m in data["measures"].values():
        if not m["spec"]["drops"]:
            continue
        r = paired(base["after"], m["after"])
        if r is not None and r["verdict"] == keeps:
            c = m["cost"]
            found.append(((c["params"], c["flops_chunk"], c.get("latency_ms") or 0.0), m, r))
    if not found:
        return None
    _, m, r = min(found, key=lambda t: t[0])
    return m, r


def none_selected(run_dir: str | Path) -> str:
    """The closing line when no cut is selected, in the report's verdict words, e.g. "no cut keeps success
    within 5 points (2 cuts: not distinguishable at this episode count x2): nothing exported to selected/"."""
    data = load(Store(run_dir))
    counts: dict[str, int] = {}
    for m in data["measures"].values():
        if m["spec"]["drops"]:
            r = paired(data["baseline"]["after"], m["after"])
            v = r["verdict"] if r is not None else "no paired episodes"
            counts[v] = counts.get(v, 0) + 1
    said = ", ".join(f"{v} x{n}" for v, n in counts.items())
    n = sum(counts.values())
    return (
        f"no cut keeps success within {TOLERANCE * 100:g} points ({n} cut{'s' * (n != 1)}: {said}): "
        "nothing exported to selected/"
    )


def export(run_dir: str | Path) -> Path | None:
    """Write `<run_dir>/selected/` for the selected variant; None (and nothing written) when there is none."""
    run_dir = Path(run_dir)
    data = load(Store(run_dir))
    picked = select(data)
    if picked is None:
        return None
    m, r = picked
    final = run_dir / "work" / m["id"] / "recover" / "final"
    if not (final / "config.json").is_file():
        return None  # measured elsewhere (another machine's shard): its checkpoint is not here
    base = data["baseline"]
    selection = {
        "measurement": m["id"],
        "cut": m["spec"]["drops"],
        "part": m["spec"].get("part", "block"),
        "plan": m.get("plan"),
        "cost": m["cost"],
        "baseline_cost": base["cost"],
        "success_before_recovery": m["before"].get("success"),
        "success_after_recovery": m["after"].get("success"),
        "baseline_success_after_recovery": base["after"].get("success"),
        "paired": r,
        "budget": m.get("budget"),
        "rule": f"fewest parameters among cuts whose paired 95% interval keeps within {TOLERANCE:.0%} of "
        "the recovered baseline",
    }
    out = run_dir / "selected"
    with atomic_dir(out, replace=True) as tmp:
        for f in final.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        (tmp / "selection.json").write_text(json.dumps(selection, indent=2, default=str) + "\n")
    return out
