"""`--eval.sequential` end to end on tiny policies (3-step MetaWorld episodes): a DTR sweep's cuts run in
rounds, the baseline's extra episodes are stored once and reused, the report says what each verdict took;
prune-units continues its pruned models the same way."""

import json

from vlaprune.cli import main
from vlaprune.configs import CalibrationConfig, DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.evaluate.paired import UNDECIDED
from vlaprune.experiments import dtr, report
from vlaprune.experiments.store import Store

SEQ = EpisodesConfig(n_episodes=1, sequential=True, round_episodes=1, max_episodes=3)


def config(out, data):
    return dtr.DTRConfig(
        policy=PolicyConfig(path="tiny:smolvla"),
        dataset=DatasetConfig(root=str(data)),
        env=EnvConfig(type="metaworld", task="reach-v3", max_steps=3),
        sweep=dtr.SweepConfig(
            components=["language"], levels=["drop_half", "keep_2"], methods=["position_last"]
        ),
        recover=dtr.BudgetConfig(steps=1, batch_size=2, trainable="all"),
        eval=SEQ,
        probe_episodes=1,
        holdout=0.34,
        calibration=CalibrationConfig(batches=1, batch_size=2),
        output_dir=str(out),
    )


def test_dtr_cuts_run_in_rounds_and_the_report_says_what_each_verdict_took(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    dtr.run(config(out, tiny_dataset))
    store = Store(out)
    cuts = [m for m in store.rows("measure") if m["spec"]["drops"]]
    base = next(m for m in store.rows("measure") if not m["spec"]["drops"])
    assert len(cuts) == 2 and base["spec"]["settings"]["episodes"]["sequential"] == [1, 3]
    assert len(base["after"]["tasks"]["reach-v3"]["episodes_detail"]) == 1  # its own first look
    for m in cuts:
        seq = m["after"]["sequential"]
        mine = m["after"]["tasks"]["reach-v3"]["episodes_detail"]
        assert seq["looks"] == [1, 2, 3]
        assert [r["seed"] for r in seq["baseline_episodes"]["reach-v3"]] == [r["seed"] for r in mine]
        assert len(m["before"]["tasks"]["reach-v3"]["episodes_detail"]) == 1  # before recovery: n_episodes
    # the tiny policy never succeeds in 3 steps: identical outcomes, undecided at the maximum of 3
    assert all(len(m["after"]["tasks"]["reach-v3"]["episodes_detail"]) == 3 for m in cuts)
    extensions = store.rows("episodes")  # the baseline's seeds 2 and 3, run once for both cuts
    assert sorted((e["spec"]["seed"], e["spec"]["n"]) for e in extensions) == [(100_001, 1), (100_002, 1)]
    report.build(out)
    md = (out / "report.md").read_text()
    assert "episodes the verdict took" in md and "3 episodes (3 per task, at the maximum)" in md
    assert UNDECIDED in md and "more episodes per task would decide it" in md
    again = dtr.run(config(out, tiny_dataset))  # a rerun measures nothing and runs no episode
    assert again["rows"] == len(store.rows()) and len(store.rows("episodes")) == 2


def test_prune_units_continues_pruned_models_in_rounds(smolvla, tiny_dataset, tmp_path):
    smolvla.save_pretrained(tmp_path / "vla")
    out = tmp_path / "pruned"
    args = [
        "prune-units",
        f"--policy.path={tmp_path / 'vla'}",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
        "--calibration.batch_size=4",
        "--ratios=language.mlp=0.25",
        "--criterion=magnitude",
        "--env.type=metaworld",
        "--env.task=reach-v3",
        "--env.max_steps=3",
        "--eval.n_episodes=1",
        "--eval.sequential=true",
        "--eval.round_episodes=2",
        "--eval.max_episodes=3",
        f"--output_dir={out}",
    ]
    assert main(args) == 0
    rep = json.loads((out / "prune.json").read_text())
    row = rep["rows"][0]
    assert rep["original"]["success_tasks"]["reach-v3"]["episodes"] == 1
    assert row["success_tasks"]["reach-v3"]["episodes"] == 3
    p = row["success_paired"]
    assert p["sequential"] and p["looks"] == [1, 3] and p["verdict"] == UNDECIDED and p["n"] == 3
