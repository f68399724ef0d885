"""--policy.device: every stage runs the policy where the user asks, and says so clearly when it cannot.

The `gpu` test runs the whole pipeline (score, drop, recover in bf16, offline eval, unit pruning, closed
loop) with the policy on CUDA; it is outside the default run (`-m gpu` selects it on a CUDA machine).
"""

import json

import pytest
import torch

from vlaprune.cli import main
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy


def load_model(path: str, device: str = ""):
    return load_policy(PolicyConfig(path=path, device=device)).module


def test_device_moves_model_and_config():
    policy = load_model("tiny:smolvla", device="cpu")
    assert policy.config.device == "cpu"
    assert {p.device.type for p in policy.parameters()} == {"cpu"}
    with pytest.raises(VlapruneError, match="not a device"):
        load_model("tiny:smolvla", device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(VlapruneError, match="no CUDA device"):
            load_model("tiny:smolvla", device="cuda")


def test_cli_reports_an_unusable_device(tiny_dataset, tmp_path, cli_error):
    want = "cuda:99" if torch.cuda.is_available() else "cuda"
    argv = [
        "score",
        "--policy.path=tiny:smolvla",
        f"--dataset.root={tiny_dataset}",
        f"--policy.device={want}",
    ]
    assert "CUDA device(s) here" in cli_error([*argv, f"--output={tmp_path}/s.json"])
    assert not (tmp_path / "s.json").exists()


def ok(*args: str) -> None:
    assert main(list(args)) == 0, args


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipeline_on_cuda(smolvla, tiny_dataset, tmp_path):
    ckpt, t = tmp_path / "vla", tmp_path
    smolvla.save_pretrained(ckpt)
    data, dev, small = (
        f"--dataset.root={tiny_dataset}",
        "--policy.device=cuda",
        ("--calibration.batches=1", "--calibration.batch_size=4"),
    )
    ok("score", f"--policy.path={ckpt}", data, dev, *small, "--compare=loo", f"--output={t / 's.json'}")
    scores = json.loads((t / "s.json").read_text())
    assert set(scores["results"]) == {"gateprobe", "loo"} and scores["loss"] == scores["loss"]  # not NaN
    ok(
        "drop",
        f"--policy.path={ckpt}",
        dev,
        "--drop.language=2",
        f"--output_dir={t / 'cut'}",
        "--latency_calls=3",
    )
    ok(
        "recover",
        f"--policy.path={t / 'cut'}",
        data,
        "--mixed_precision=bf16",
        "--steps=30",
        "--batch_size=8",
        "--lr=3e-3",
        "--save_every=10",
        "--log_every=10",
        f"--output_dir={t / 'rec'}",
    )
    log = [json.loads(line) for line in (t / "rec" / "train.log").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"], log
    rec = load_model(str(t / "rec" / "final"), device="cuda")
    assert {p.device.type for p in rec.parameters()} == {"cuda"}
    ok(
        "eval",
        f"--policy.path={t / 'rec' / 'final'}",
        data,
        dev,
        "--offline=true",
        "--holdout=0.3",
        "--env.type=metaworld",
        "--env.task=reach-v3",
        "--env.max_steps=5",
        "--eval.n_episodes=2",
        f"--output={t / 'eval.json'}",
    )
    ev = json.loads((t / "eval.json").read_text())
    assert ev["offline"]["frames"] > 0 and ev["closed_loop"]["normal"]["tasks"]["reach-v3"]["episodes"] == 2
    ok(
        "prune-units",
        f"--policy.path={ckpt}",
        data,
        dev,
        *small,
        "--criterion=wanda",
        "--ratios=language.mlp=0.25,vision.attn=0.5",
        "--compare=taylor,magnitude",
        f"--output_dir={t / 'units'}",
    )
    rows = json.loads((t / "units" / "prune.json").read_text())["rows"]
    assert [r["criterion"] for r in rows] == ["wanda", "taylor", "magnitude"]
    assert all(r["loss"] == r["loss"] for r in rows)  # not NaN
