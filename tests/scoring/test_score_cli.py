"""`vlaprune score` end to end on a tiny policy and a LeRobotDataset the test builds, and its errors."""

import json

import pytest
import torch

from vlaprune.cli import main


@pytest.fixture(scope="module")
def smolvla_ckpt(smolvlm_dir, tmp_path_factory):
    from vlaprune.tiny.smolvla import tiny_smolvla

    d = tmp_path_factory.mktemp("ckpt")
    tiny_smolvla(smolvlm_dir).save_pretrained(d)
    return d


def test_score_with_compare(smolvla_ckpt, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "scores.json"
    args = [
        "score",
        f"--policy.path={smolvla_ckpt}",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=2",
        "--calibration.batch_size=4",
        "--compare=block_influence,magnitude",
        f"--output={out}",
    ]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["method"] == "gateprobe" and res["seed"] == 0 and res["loss"] > 0
    assert set(res["results"]) == {"gateprobe", "block_influence", "magnitude", "loo"}
    gp = res["results"]["gateprobe"]
    assert {s: len(v) for s, v in gp["scores"].items()} == {"vision": 2, "language": 4, "action": 4}
    assert len(gp["rank"]) == 10 and gp["seconds"] > 0
    # the last language block's update feeds nothing the policy reads: scored 0, and named dead
    assert res["dead"] == {"language": [3]} and gp["scores"]["language"][3] == 0
    agree = res["agreement_with_loo"]["gateprobe"]
    assert set(agree) == {"vision", "language", "action", "all"}
    assert -1 <= agree["all"]["spearman"] <= 1
    printed = capsys.readouterr().out
    assert "rank agreement with leave-one-out" in printed and "gateprobe" in printed
    assert "language: block(s) [3] are dead compute" in printed.replace("\n", " ")


def test_score_components_and_sublayers(tiny_dataset, tmp_path):
    out = tmp_path / "s.json"
    args = [
        "score",
        "--policy.path=tiny:pi0",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
        "--calibration.batch_size=2",
        "--components=language",
        "--method=gateprobe_branch",
        "--granularity=sublayer",
        f"--output={out}",
    ]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["stacks"] == ["language"]
    detail = res["results"]["gateprobe_branch"]["detail"]["dL_dg"]
    assert set(detail) == {f"language/{i}/{p}" for i in range(4) for p in ("attn", "mlp")}
    block0 = -(detail["language/0/attn"] + detail["language/0/mlp"])
    assert res["results"]["gateprobe_branch"]["scores"]["language"][0] == pytest.approx(block0)


@pytest.fixture(scope="module")
def mismatched_datasets(tmp_path_factory):
    from vlaprune.tiny.dataset import write_tiny_dataset

    root = tmp_path_factory.mktemp("bad")
    return (
        write_tiny_dataset(root / "state6", episodes=1, frames=8, state_dim=6),
        write_tiny_dataset(root / "front", episodes=1, frames=8, cameras=("front",)),
    )


@pytest.fixture(scope="module")
def nan_ckpt(smolvlm_dir, tmp_path_factory):
    from vlaprune.tiny.smolvla import tiny_smolvla

    policy = tiny_smolvla(smolvlm_dir)
    with torch.no_grad():
        policy.model.state_proj.weight.fill_(float("nan"))
    d = tmp_path_factory.mktemp("nan")
    policy.save_pretrained(d)
    return d


def test_bad_input(smolvla_ckpt, nan_ckpt, tiny_dataset, mismatched_datasets, tmp_path, cli_error):
    state6, front = mismatched_datasets
    base = [f"--policy.path={smolvla_ckpt}", f"--dataset.root={tiny_dataset}", "--calibration.batch_size=2"]
    cases = [
        (base + ["--method=oracle"], "unknown method 'oracle'"),
        (base + ["--compare=gateprobe,nope"], "unknown method 'nope'"),
        (base + ["--components=brain"], "unknown component 'brain'"),
        (base + ["--calibration.batches=0"], "need at least one calibration batch"),
        (base + ["--granularity=sublayer"], "--granularity=sublayer does not apply to gateprobe"),
        ([f"--policy.path={smolvla_ckpt}", f"--dataset.root={state6}"], "shape (6,) in the dataset but (4,)"),
        ([f"--policy.path={smolvla_ckpt}", f"--dataset.root={front}"], "no feature 'observation.images.top'"),
        ([f"--policy.path={smolvla_ckpt}", f"--dataset.root={tmp_path}"], "not a LeRobotDataset"),
        (
            [f"--policy.path={nan_ckpt}", f"--dataset.root={tiny_dataset}", "--calibration.batch_size=2"],
            "the loss is nan",
        ),
    ]
    out = tmp_path / "scores.json"
    for args, message in cases:
        assert message in cli_error(["score", *args, f"--output={out}"]), args
        assert not out.exists()
