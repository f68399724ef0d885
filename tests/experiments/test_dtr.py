"""The DTR runner: expected rows on a tiny sweep, a killed sweep reruns exactly, reports from the store."""

import json
import shutil

import pytest

from tests.chromium import assert_shows_text, screenshot
from vlaprune.configs import CalibrationConfig, DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.experiments import dtr, report
from vlaprune.experiments.measure import measure_one
from vlaprune.experiments.store import Store
from vlaprune.policy import load_policy
from vlaprune.surgery.select import select_blocks


def config(out, data, **kw):
    base = dict(
        policy=PolicyConfig(path="tiny:smolvla"),
        dataset=DatasetConfig(root=str(data)),
        env=EnvConfig(type="metaworld", task="reach-v3", max_steps=3),
        sweep=dtr.SweepConfig(
            components=["vision", "language"], levels=["0.5"], methods=["gateprobe", "position_last"]
        ),
        recover=dtr.BudgetConfig(steps=2, batch_size=2, trainable="all"),
        eval=EpisodesConfig(n_episodes=1),
        probe_episodes=1,
        holdout=0.34,
        calibration=CalibrationConfig(batches=1, batch_size=2),
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
    assert all(p["drops"] == {"language": p["drops"]["language"]} for p in lang)  # keep-K/V: expert stays
    base = [m for m in store.rows("measure") if not m["spec"]["drops"]][0]
    assert set(base["before"]["probes"]) >= {"normal", "instruction:empty", "camera:blank"}
    for m in store.rows("measure"):
        for phase in ("before", "after"):
            assert 0 <= m[phase]["success"] <= 1 and m[phase]["offline"]["loss"] > 0
            assert m[phase]["offline"]["episodes"] == [2]  # held-out episode, never trained on
        assert m["config_hash"] and m["vlaprune_version"] and m["seed"] == 0
        assert m["recovery"]["steps"] == 2


def test_rows_and_report_carry_inference_memory(finished_run):
    """Each row holds what one inference holds in all (weights + activations) beside the growth; a cut
    variant's weights and total are below the baseline's, and the report shows the total and how."""
    out, _ = finished_run
    rows = Store(out).rows("measure")
    for m in rows:
        mem = m["cost"]["inference_memory"]
        assert mem["total_bytes"] >= mem["weights_bytes"] > 0 and mem["how"].startswith("CPU")
        assert mem["growth_bytes"] == m["cost"]["peak_memory_bytes"]
    base = next(m["cost"]["inference_memory"] for m in rows if not m["spec"]["drops"])
    cut = [m["cost"]["inference_memory"] for m in rows if m["spec"]["drops"]]
    assert cut and all(c["weights_bytes"] < base["weights_bytes"] for c in cut)
    assert min(c["total_bytes"] for c in cut) < base["total_bytes"]
    md = report.build(out)[1].read_text()
    assert "inference memory MB (weights + activations)" in md and f"Inference memory: {base['how']}." in md
    cells = next(line for line in md.splitlines() if line.startswith("| none (baseline)")).split("|")[1:-1]
    column = report.MEASUREMENT_COLUMNS.index("inference memory MB (weights + activations)")
    assert cells[column].strip() == f"{base['total_bytes'] / 2**20:.0f}"


def test_distill_recovery_uses_the_unpruned_policy_as_teacher(tiny_dataset, tmp_path):
    """--recover.mode=distill on a lerobot policy: every row (the baseline too, from its own copy) is
    distilled from the unpruned policy, saved once under work/teacher with the uncut block count."""
    cfg = config(
        tmp_path / "run",
        tiny_dataset,
        env=EnvConfig(),
        sweep=dtr.SweepConfig(components=["language"], levels=["0.5"], methods=["position_last"]),
        recover=dtr.BudgetConfig(steps=1, batch_size=2, trainable="all", mode="distill"),
    )
    dtr.run(cfg)
    rows = Store(tmp_path / "run").rows("measure")
    teacher = tmp_path / "run" / "work" / "teacher"
    assert len(rows) == 2 and {r["recovery"]["teacher"] for r in rows} == {str(teacher)}
    assert all(r["recovery"]["mode"] == "distill" and r["recovery"]["last_loss"] > 0 for r in rows)
    base = next(r for r in rows if not r["spec"]["drops"])
    assert (
        sum(p.numel() for p in load_policy(PolicyConfig(path=str(teacher))).module.parameters())
        == (base["cost"]["params"])
    )


def test_killed_sweep_reruns_to_the_same_rows(tiny_dataset, tmp_path, finished_run):
    out = tmp_path / "run"
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return measure_one(*a, **k)

    with pytest.raises(RuntimeError, match="killed"):
        dtr.run(config(out, tiny_dataset), measure=crashing)
    partial = kinds(Store(out)).get("measure", 0)
    assert partial == 1
    summary = dtr.run(config(out, tiny_dataset))
    ids = [r["id"] for r in Store(out).rows()]
    assert len(ids) == len(set(ids))
    assert kinds(Store(out)) == kinds(Store(finished_run[0]))
    assert summary["measurements"] == kinds(Store(out))["measure"]
    again = dtr.run(config(out, tiny_dataset), measure=nothing)
    assert again["rows"] == len(ids)


def fake_result() -> dict:
    ev = {"success": 0.5, "offline": {"loss": 1.0}, "tasks": {}}
    return {
        "blocks_removed": {},
        "plan": None,
        "cost": {"params": 1, "flops_chunk": 1, "latency_ms": 1.0},
        "before": ev,
        "after": ev,
        "recovery": {},
    }


def nothing(*a, **k):
    pytest.fail("nothing should be measured")


def test_rerun_remeasures_exactly_the_rows_whose_settings_changed(tiny_dataset, tmp_path):
    seen = []

    def fake(cfg, mspec, work, baseline, **kw):
        seen.append(cfg.eval.n_episodes)
        return fake_result()

    out = tmp_path / "run"
    first = dtr.run(config(out, tiny_dataset), measure=fake)
    n = first["measurements"]
    assert seen == [1] * n
    dtr.run(config(out, tiny_dataset), measure=nothing)  # unchanged settings: every row is reused
    more = config(out, tiny_dataset, eval=EpisodesConfig(n_episodes=2))
    dtr.run(more, measure=fake)  # more episodes per task: every closed-loop row is measured again
    assert seen == [1] * n + [2] * n
    # the number of parallel simulators does not change an episode, so it reuses rows
    dtr.run(config(out, tiny_dataset, eval=EpisodesConfig(n_episodes=2, n_envs=2)), measure=nothing)
    dtr.run(config(out, tiny_dataset, eval=EpisodesConfig(n_episodes=2, seed=7)), measure=fake)
    assert seen[2 * n :] == [2] * n  # another eval seed: other episodes
    measures = Store(out).rows("measure")
    assert len(measures) == 3 * n and len({m["spec"]["settings_id"] for m in measures}) == 3
    # the report shows the newest settings only and says so
    data = report.load(Store(out))
    assert len(data["measures"]) == n and data["other_settings"] == 2 * n


def test_held_out_must_exist_and_tasks_must_be_known(tiny_dataset, tmp_path):
    from vlaprune.errors import VlapruneError

    with pytest.raises(VlapruneError, match="--holdout=0"):
        config(tmp_path / "a", tiny_dataset, holdout=0.0)
    with pytest.raises(VlapruneError, match="MetaWorld task"):
        config(tmp_path / "a", tiny_dataset, env=EnvConfig(type="metaworld", task="fly-v3"))
    assert not (tmp_path / "a").exists()


def test_shards_split_the_measurements(tiny_dataset, tmp_path):
    seen = []

    def fake(cfg, mspec, work, baseline, **kw):
        seen.append((cfg.shard, json.dumps(mspec["drops"], sort_keys=True)))
        return fake_result()

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
    html, _ = report.build(finished_run[0])
    assert "computed on a model with random weights" in html.read_text()  # tiny:smolvla says so
    assert_shows_text(screenshot(html, tmp_path, (1200, 3000)), (1200, 3000))  # text and figures


def test_bad_config(tiny_dataset, tmp_path):
    from vlaprune.errors import VlapruneError

    with pytest.raises(VlapruneError, match="unknown method"):
        config(tmp_path, tiny_dataset, sweep=dtr.SweepConfig(methods=["oracle"]))
    with pytest.raises(VlapruneError, match="i/n"):
        config(tmp_path, tiny_dataset, shard="3/2")
    with pytest.raises(VlapruneError, match="unknown component"):
        dtr.run(config(tmp_path / "x", tiny_dataset, sweep=dtr.SweepConfig(components=["brain"])))


def _episodes(successes: list[bool]) -> dict:
    """Two tasks, seeds 0.. : per-task records as the closed loop writes them."""
    half = len(successes) // 2
    tasks = {}
    for t, chunk in (("a", successes[:half]), ("b", successes[half:])):
        recs = [{"seed": i, "success": ok, "steps": 5, "return": 0.0} for i, ok in enumerate(chunk)]
        k = sum(chunk)
        tasks[t] = {"success_rate": k / len(chunk), "successes": k, "episodes": len(chunk), "ci95": [0, 1]}
        tasks[t]["episodes_detail"] = recs
    return {"success": sum(successes) / len(successes), "offline": {"loss": 1.0}, "tasks": tasks}


def test_verdict_uses_the_paired_interval(tmp_path):
    """Hand-made store: the verdict per component follows evaluate.paired on the same episodes."""
    from vlaprune.evaluate.paired import compare, newcombe_paired_ci

    store = Store(tmp_path)
    extra = {"params": 10, "params_pct": 50.0, "flops_pct": None, "coupling": "-"}
    stacks = [{"name": "language", "blocks": 8, **extra}, {"name": "vision", "blocks": 4, **extra}]
    store.put("anat", {"kind": "anatomy", "spec": {}, "anatomy": {"stacks": stacks}})
    n = 100
    outcomes = {
        "base": [True] * n,
        "language-2": [True] * n,  # identical on every episode: keeps success within 5 points
        "language-4": [True] * 60 + [False] * 40,  # loses success
        "vision-1": [True] * 97 + [False] * 3,  # 3 discordant of 100: cannot tell
    }
    for name, succ in outcomes.items():
        comp, _, k = name.partition("-")
        drops = {comp: list(range(int(k)))} if k else {}
        ev = _episodes(succ)
        row = {"kind": "measure", "spec": {"drops": drops, "settings_id": "s"}, "before": ev, "after": ev}
        row |= {"blocks_removed": {comp: int(k)} if k else {}, "recovery": {}}
        row["cost"] = {"params": 10 - (int(k) if k else 0), "flops_chunk": 10, "latency_ms": 1.0}
        store.put(name, row)
        if k:
            spec = {"component": comp, "level": k, "method": "gateprobe", "seed": 0, "settings_id": "s"}
            store.put(f"plan-{name}", {"kind": "plan", "spec": spec, "drops": drops, "measurement": name})
    lines = report.verdict(report.load(store))
    lang = next(x for x in lines if x.startswith("language:"))
    vision = next(x for x in lines if x.startswith("vision:"))
    assert "2 of 8 blocks can go" in lang and "keeps success within 5 points" in lang
    assert "not distinguishable at this episode count" in vision
    # the numbers quoted are the paired ones: 3 episodes lost, none gained, over 100 pairs
    low, high = newcombe_paired_ci(97, 0, 3, 0)
    assert low < -0.05 and high > 0  # includes both no change and a loss of more than 5 points
    assert f"{-0.03:+.0%}" in vision and f"{low:+.0%}" in vision
    assert compare([True] * n, outcomes["language-4"])["ci_high"] < 0
    md = report.build(tmp_path)[1].read_text()
    assert "loses success" in md  # the 4-block language cut's row in the measurements table


def test_plan_cost_counts_coupled_partners():
    """pi0 drops a language block with its expert partner: a last language block that scores 0 must not
    drag out an expert block that scores high."""
    from vlaprune.policy import load_policy

    lay = load_policy("tiny:pi0").layout()
    scores = {"language": [5.0, 4.0, 3.0, 0.0], "action": [1.0, 1.0, 1.0, 100.0]}
    assert select_blocks(lay, "language", scores, 1, "pair") == {"language": [2], "action": [2]}
    assert select_blocks(lay, "language", {"language": scores["language"]}, 1, "pair") == {
        "language": [3],
        "action": [3],
    }
    # keep-K/V (the default): the expert keeps its blocks, so only the language scores count
    assert select_blocks(lay, "language", scores, 1) == {"language": [3]}


def test_protocol_levels_in_the_sweep(tiny_dataset, tmp_path):
    out = tmp_path / "protocol"
    sweep = dtr.SweepConfig(
        components=["vision", "language"], levels=["drop_half", "keep_2"], methods=["position_last"]
    )
    dtr.run(config(out, tiny_dataset, sweep=sweep), measure=lambda *a, **k: fake_result())
    rows = {(p["spec"]["component"], p["spec"]["level"]): p for p in Store(out).rows("plan")}
    # vision has 2 blocks (no keep_2); keep-K/V language drops leave SmolVLA's self / cross pattern intact
    assert set(rows) == {("vision", "drop_half"), ("language", "drop_half"), ("language", "keep_2")}
    assert rows["vision", "drop_half"]["drops"] == {"vision": [1]}
    assert rows["language", "keep_2"]["drops"] == {"language": [1, 2]}
    assert rows["language", "drop_half"]["drops"] == {"language": [1, 3]}
    assert {p["spec"]["method"] for p in rows.values()} == {"protocol"}
    with pytest.raises(VlapruneError, match="expected a fraction"):
        config(out, tiny_dataset, sweep=dtr.SweepConfig(levels=["half"]))


def test_task_speedup_corrects_per_action_speedup_by_episode_length():
    def m(latency, steps):
        ev = {"tasks": {"t": {"episodes_detail": [{"seed": 0, "success": True, "steps": s} for s in steps]}}}
        return {"cost": {"latency_ms": latency}, "before": ev, "after": ev}

    base = m(10.0, [40, 60])
    assert report.speedups(base, m(5.0, [100, 100]), "after") == (2.0, 1.0)  # twice as fast, twice the steps
    assert report.speedups(base, m(5.0, [25, 25]), "before") == (2.0, 4.0)


def test_flops_matched_budget_gives_smaller_models_more_steps(tiny_dataset, tmp_path):
    from vlaprune.recover.budget import budget_steps

    assert budget_steps("same_steps", 100, 10, 5) == 100
    assert budget_steps("flops_matched", 100, 10, 4) == 250
    out = tmp_path / "flops"
    cfg = config(
        out,
        tiny_dataset,
        env=EnvConfig(),  # offline only: this test is about the budget
        sweep=dtr.SweepConfig(components=["language"], levels=["0.5"], methods=["position_last"]),
        recover=dtr.BudgetConfig(steps=6, batch_size=2, trainable="all", kind="flops_matched"),
    )
    dtr.run(cfg)
    rows = Store(out).rows("measure")
    base = next(r for r in rows if not r["spec"]["drops"])
    cut = next(r for r in rows if r["spec"]["drops"])
    b, c = base["budget"], cut["budget"]
    assert b["steps"] == 6 and base["recovery"]["steps"] == 6
    assert c["flops_per_step"] < b["flops_per_step"]
    assert c["steps"] == round(6 * b["flops_per_step"] / c["flops_per_step"]) > 6
    assert cut["recovery"]["steps"] == c["steps"]
    assert c["training_flops"] == c["steps"] * c["flops_per_step"]
    with pytest.raises(VlapruneError, match="--recover.kind"):
        config(out, tiny_dataset, recover=dtr.BudgetConfig(kind="same_time"))


def test_sublayer_parts_in_the_sweep(tiny_dataset, tmp_path):
    """--sweep.parts=block,attn,mlp: protocol levels for every part; ranked sublayer levels only by the
    methods with per-sublayer scores, the k lowest of that sublayer's own scores."""
    out = tmp_path / "parts"
    sweep = dtr.SweepConfig(
        components=["language"],
        levels=["drop_half", "0.5"],
        methods=["gateprobe_branch_abs", "position_last"],
        parts=["block", "attn", "mlp"],
    )
    dtr.run(config(out, tiny_dataset, sweep=sweep), measure=lambda *a, **k: fake_result())
    store = Store(out)
    rows = {
        (p["spec"].get("part", "block"), p["spec"]["level"], p["spec"]["method"]): p
        for p in store.rows("plan")
    }
    assert {k for k in rows if k[0] == "mlp"} == {
        ("mlp", "drop_half", "protocol"),
        ("mlp", "0.5", "gateprobe_branch_abs"),
    }
    assert rows["attn", "drop_half", "protocol"]["drops"] == {"language": [1, 3]}
    assert ("block", "0.5", "position_last") in rows and ("attn", "0.5", "position_last") not in rows
    sub = next(r for r in store.rows("scores") if r["spec"].get("granularity") == "sublayer")
    for part in ("attn", "mlp"):
        s = sub["parts"][part]["language"]
        want = sorted(sorted(range(4), key=lambda i: (s[i], i))[:2])
        assert rows[part, "0.5", "gateprobe_branch_abs"]["drops"] == {"language": want}
    specs = [m["spec"] for m in store.rows("measure")]
    assert {s.get("part") for s in specs} == {None, "attn", "mlp"}  # whole-block rows keep their old ids
    with pytest.raises(VlapruneError, match="unknown part 'ffn'"):
        config(out, tiny_dataset, sweep=dtr.SweepConfig(parts=["block", "ffn"]))


def test_a_sublayer_row_is_measured_and_reported(tiny_dataset, tmp_path):
    out = tmp_path / "mlp"
    cfg = config(
        out,
        tiny_dataset,
        env=EnvConfig(),  # offline only
        sweep=dtr.SweepConfig(
            components=["action"], levels=["drop_half"], methods=["position_last"], parts=["mlp"]
        ),
    )
    dtr.run(cfg)
    rows = Store(out).rows("measure")
    cut = next(r for r in rows if r["spec"]["drops"])
    base = next(r for r in rows if not r["spec"]["drops"])
    assert cut["plan"]["part"] == "mlp" and cut["plan"]["sublayers"] == {"action": [1, 3]}
    assert cut["blocks_removed"] == {"action.mlp": 2} and cut["cost"]["params"] < base["cost"]["params"]
    assert cut["recovery"]["steps"] == 2
    html_path, md = report.build(out)
    assert "action mlp-only" in md.read_text()


def test_the_selected_variant_is_exported(tmp_path):
    """Hand-made store: two cuts keep success, one loses; selected/ gets the smaller keeping cut's recovered
    checkpoint and selection.json; with no keeping cut nothing is written."""
    from vlaprune.experiments.select import export

    store = Store(tmp_path)
    n = 100
    rows = {"base": ([True] * n, 10), "a": ([True] * n, 8), "b": ([True] * n, 6), "c": ([False] * n, 2)}
    for name, (succ, params) in rows.items():
        drops = {} if name == "base" else {"language": list(range(10 - params))}
        ev = _episodes(succ)
        row = {"kind": "measure", "spec": {"drops": drops, "settings_id": "s"}, "before": ev, "after": ev}
        row |= {"blocks_removed": {}, "recovery": {}, "plan": {"kind": "blocks", "drops": drops}}
        row["cost"] = {"params": params, "flops_chunk": params, "latency_ms": 1.0}
        store.put(name, row)
        final = tmp_path / "work" / name / "recover" / "final"
        final.mkdir(parents=True)
        (final / "config.json").write_text(json.dumps({"type": "vlaprune_smolvla", "name": name}))
        (final / "model.safetensors").write_bytes(name.encode())
    out = export(tmp_path)
    assert out == tmp_path / "selected"
    assert json.loads((out / "config.json").read_text())["name"] == "b"  # fewest params that keeps success
    assert (out / "model.safetensors").read_bytes() == b"b"
    sel = json.loads((out / "selection.json").read_text())
    assert sel["cut"] == {"language": [0, 1, 2, 3]} and sel["cost"]["params"] == 6
    assert sel["paired"]["verdict"].startswith("keeps success") and sel["success_after_recovery"] == 1.0
    for name in ("a", "b"):  # no cut keeps success any more: nothing is exported, the old one stays
        store.put(name, {**store.get(name), "after": _episodes([False] * n)})
    assert export(tmp_path) is None and (tmp_path / "selected" / "selection.json").is_file()
