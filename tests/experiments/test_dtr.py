"""The DTR runner: expected rows on a tiny sweep, a killed sweep reruns exactly, reports from the store."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from vlaprune.configs import DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.experiments import dtr, report
from vlaprune.experiments.store import Store


def config(out, data, **kw):
    base = dict(
        policy=PolicyConfig(path="tiny:smolvla"),
        dataset=DatasetConfig(root=str(data)),
        env=EnvConfig(type="metaworld", task="reach-v3", max_steps=3),
        sweep=dtr.SweepConfig(components="vision,language", levels="0.5", methods="gateprobe,position_last"),
        recover=dtr.BudgetConfig(steps=2, batch_size=2, trainable="all"),
        eval=EpisodesConfig(n_episodes=1),
        probe_episodes=1,
        holdout=0.34,
        calib_batches=1,
        calib_batch_size=2,
        output_dir=str(out),
    )
    return dtr.DTRConfig(**{**base, **kw})


def kinds(store):
    out = {}
    for r in store.rows():
        out[r["kind"]] = out.get(r["kind"], 0) + 1
    return out


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("dtr") / "run"
    summary = dtr.run(config(out, tiny_dataset))
    return out, summary


def test_sweep_rows(finished_run):
    out, summary = finished_run
    store = Store(out)
    k = kinds(store)
    assert k["anatomy"] == 1 and k["scores"] == 2 and k["plan"] == 4
    assert k["measure"] == summary["measurements"] <= 5
    plans = store.rows("plan")
    assert {(p["spec"]["component"], p["spec"]["method"]) for p in plans} == {
        (c, m) for c in ("vision", "language") for m in ("gateprobe", "position_last")
    }
    for p in plans:  # every plan points at a finished measurement of exactly its drops
        m = store.get(p["measurement"])
        assert m["spec"]["drops"] == p["drops"]
    lang = [p for p in plans if p["spec"]["component"] == "language"]
    assert all(len(p["drops"]["language"]) == 2 for p in lang)
    assert all(p["drops"]["action"] == p["drops"]["language"] for p in lang)  # SmolVLA: partners go too
    base = [m for m in store.rows("measure") if not m["spec"]["drops"]][0]
    assert set(base["before"]["probes"]) >= {"normal", "instruction:empty", "camera:blank"}
    for m in store.rows("measure"):
        for phase in ("before", "after"):
            assert 0 <= m[phase]["success"] <= 1 and m[phase]["offline"]["loss"] > 0
            assert m[phase]["offline"]["episodes"] == [2]  # held-out episode, never trained on
        assert m["config_hash"] and m["vlaprune_version"] and m["seed"] == 0
        assert m["recovery"]["steps"] == 2


def test_killed_sweep_reruns_to_the_same_rows(tiny_dataset, tmp_path, finished_run):
    out = tmp_path / "run"
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return dtr._measure(*a, **k)

    with pytest.raises(RuntimeError, match="killed"):
        dtr.run(config(out, tiny_dataset), measure=crashing)
    partial = kinds(Store(out)).get("measure", 0)
    assert partial == 1
    summary = dtr.run(config(out, tiny_dataset))
    ids = [r["id"] for r in Store(out).rows()]
    assert len(ids) == len(set(ids))
    assert kinds(Store(out)) == kinds(Store(finished_run[0]))
    assert summary["measurements"] == kinds(Store(out))["measure"]
    again = dtr.run(config(out, tiny_dataset), measure=lambda *a, **k: pytest.fail("nothing left to measure"))
    assert again["rows"] == len(ids)


def test_shards_split_the_measurements(tiny_dataset, tmp_path):
    seen = []

    def fake(cfg, mspec, work, baseline, **kw):
        seen.append((cfg.shard, json.dumps(mspec["drops"], sort_keys=True)))
        ev = {"success": 0.5, "offline": {"loss": 1.0}, "tasks": {}}
        return {
            "blocks_removed": {},
            "plan": None,
            "cost": {"params": 1, "flops_chunk": 1, "latency_ms": 1.0},
            "before": ev,
            "after": ev,
            "recovery": {},
        }

    out = tmp_path / "sharded"
    a = dtr.run(config(out, tiny_dataset, shard="0/2"), measure=fake)
    b = dtr.run(config(out, tiny_dataset, shard="1/2"), measure=fake)
    assert a["this_shard"] + b["this_shard"] == a["measurements"]
    assert len({d for _, d in seen}) == len(seen) == a["measurements"]


def test_report_from_the_store_alone(finished_run, tmp_path):
    src, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(src / "rows", copy / "rows")  # nothing but the store
    html, md = report.build(copy)
    page = html.read_text()
    for section in (
        "Verdict",
        "Anatomy",
        "Measurements",
        "Language and vision sensitivity",
        "GateProbe scores per block",
        "Success vs blocks removed",
        "Success vs latency",
    ):
        assert section in page
    assert page.count("data:image/png;base64,") == 4  # GateProbe, success, loss, Pareto
    assert "## Verdict" in md.read_text() and (copy / "report_pareto.png").is_file()


def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: scripts/setup.sh installs it (apt package chromium)")
    html, _ = report.build(finished_run[0])
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            f"file://{html}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert img.size == (1200, 3000) and hi - lo > 100  # text and figures, not a blank page
    dark = float((np.asarray(img) < 128).mean())
    assert 0.005 < dark < 0.5


def test_bad_config(tiny_dataset, tmp_path):
    from vlaprune.errors import VlapruneError

    with pytest.raises(VlapruneError, match="unknown method"):
        config(tmp_path, tiny_dataset, sweep=dtr.SweepConfig(methods="oracle"))
    with pytest.raises(VlapruneError, match="i/n"):
        config(tmp_path, tiny_dataset, shard="3/2")
    with pytest.raises(VlapruneError, match="unknown component"):
        dtr.run(config(tmp_path / "x", tiny_dataset, sweep=dtr.SweepConfig(components="brain")))
