"""The demo on its shipped assets: a minimal sweep (one method, tiny budget) runs and writes the report."""

import json

import pytest

from vlaprune.cli import main
from vlaprune.experiments import assets


def test_assets_ship_with_the_package():
    assert assets.available(), "src/vlaprune/assets/metaworld4 is missing: run scripts/build_demo_assets.py"
    record = json.loads((assets.ASSETS / "eval.json").read_text())
    assert record["episodes_per_task"] >= 30
    assert set(record["normal"]["tasks"]) == set(assets.TASKS)
    size = sum(f.stat().st_size for f in assets.ASSETS.rglob("*") if f.is_file())
    assert size < 50 * 2**20  # tens of MB at most


def test_demo_minimal_run(tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo",
        f"--output_dir={out}",
        "--eval_episodes=1",
        "--probe_episodes=0",  # no probes (they run in tests/experiments/test_dtr.py)
        "--recover_steps=2",
        "--methods=position_last",
        "--levels=drop_half",
        "--n_envs=1",
        "--max_episodes=1",  # sequential rounds end to end: tests/experiments/test_rounds.py
        "--offline_batches=2",
    ]
    assert main(args) == 0
    page = (out / "report.html").read_text()
    assert "Verdict" in page and "Success vs blocks removed" in page
    measures = [json.loads(f.read_text()) for f in (out / "rows").glob("*.json")]
    # baseline, vision [1], language [1, 3] (keep-K/V), action [1, 3] (action-only: each component alone)
    assert sum(m["kind"] == "measure" for m in measures) == 4
    base = next(m for m in measures if m["kind"] == "measure" and m["spec"]["drops"] == {})
    assert "probes" not in base["before"] and base["before"]["success"] >= 0
    plans = {m["spec"]["component"]: m["drops"] for m in measures if m["kind"] == "plan"}
    assert plans == {
        "vision": {"vision": [1]},
        "language": {"language": [1, 3]},
        "action": {"action": [1, 3]},
    }
    action = next(m for m in measures if m["kind"] == "measure" and m["spec"]["drops"] == {"action": [1, 3]})
    assert action["plan"]["skipped"] == {"action": [1, 3]} and action["blocks_removed"] == {"action": 2}
    # per-action speed-up timed beside the unpruned model, in the cut's own measurement
    assert 0 < action["cost"]["latency_ratio_vs_unpruned"] < 1.5
    assert "action [1, 3] (action-only)" in page and "language [1, 3] (keep-K/V)" in page
    assert "paired change vs recovered baseline" in page and "task speed-up" in page


def test_report_of_an_empty_run_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no results rows" in capsys.readouterr().err
    assert main(["report"]) == 2


@pytest.mark.slow
def test_full_demo_within_ten_minutes(tmp_path):
    import time

    t0 = time.perf_counter()
    assert main(["demo", f"--output_dir={tmp_path / 'demo'}"]) == 0
    assert time.perf_counter() - t0 < 600
