"""The DTR report's per-suite LIBERO table (the DTR paper's Table 1), from a hand-made store."""

from vlaprune.experiments import report
from vlaprune.experiments.store import Store


def _ev(rates: dict[str, float]) -> dict:
    """Closed-loop results of LIBERO tasks with these success rates (4 episodes each)."""
    tasks = {}
    for t, rate in rates.items():
        k = round(4 * rate)
        recs = [{"seed": i, "success": i < k, "steps": 5, "return": 0.0} for i in range(4)]
        tasks[t] = {
            "success_rate": k / 4,
            "successes": k,
            "episodes": 4,
            "ci95": [0, 1],
            "episodes_detail": recs,
        }
    return {"success": sum(rates.values()) / len(rates), "offline": {"loss": 1.0}, "tasks": tasks}


def _put(store, name, drops, before, after):
    row = {"kind": "measure", "spec": {"drops": drops, "settings_id": "s"}, "before": _ev(before)}
    row |= {"after": _ev(after), "blocks_removed": {k: len(v) for k, v in drops.items()}, "recovery": {}}
    row["cost"] = {"params": 10, "flops_chunk": 10, "latency_ms": 1.0}
    store.put(name, row)


def test_libero_rows_get_a_per_suite_table_and_a_missing_suite_is_not_zero(tmp_path):
    store = Store(tmp_path)
    full = {"libero_spatial/0": 1.0, "libero_spatial/1": 0.5, "libero_goal/3": 0.25}
    _put(store, "base", {}, full, full)
    cut = {"libero_spatial/0": 0.5, "libero_spatial/1": 0.0, "libero_goal/3": 0.0}
    _put(store, "cut", {"language": [1, 3]}, cut, full)
    md = report.build(tmp_path)[1].read_text()
    assert "## LIBERO success per suite" in md
    table = md.split("## LIBERO success per suite")[1].split("##")[0]
    assert "| cut | Spatial | Object | Goal | Long | average (suites run) |" in table
    base = next(line for line in table.splitlines() if line.startswith("| none (baseline)"))
    # Spatial: mean of 100% and 50%; Object / Long never ran; average over the two suites that ran
    assert base == "| none (baseline) | 75% -> 75% | no episodes | 25% -> 25% | no episodes | 50% -> 50% |"
    row = next(line for line in table.splitlines() if line.startswith("| language [1, 3]"))
    assert "| 25% -> 75% | no episodes | 0% -> 25% | no episodes | 12% -> 50% |" in row


def test_other_tasks_get_no_suite_table(tmp_path):
    store = Store(tmp_path)
    _put(store, "base", {}, {"reach-v3": 1.0}, {"reach-v3": 1.0})
    assert "LIBERO" not in report.build(tmp_path)[1].read_text()
