"""Offline metrics reproduce; closed-loop episodes run in MetaWorld and PushT with Wilson intervals."""

import json

import pytest

from vlaprune.cli import main
from vlaprune.configs import DatasetConfig
from vlaprune.data import Data
from vlaprune.evaluate.closed_loop import probe_instruction, rollouts, summarize, wilson
from vlaprune.policy import wrap


def pre_post(policy, root):
    return Data(wrap(policy), DatasetConfig(root=str(root))).processors()


def test_wilson_known_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(30, 30)[1] == 1.0 and wilson(30, 30)[0] == pytest.approx(0.8865, abs=1e-4)


def test_instruction_probes():
    assert probe_instruction("open the drawer", "empty", []) == ""
    assert (
        probe_instruction("open the drawer", "other", ["open the drawer", "reach the goal"])
        == "reach the goal"
    )
    shuffled = probe_instruction("press the button from the top", "shuffled", [], seed=1)
    assert sorted(shuffled.split()) == sorted("press the button from the top".split())
    assert shuffled != "press the button from the top"


def test_offline_eval_is_reproducible(smolvla, tiny_dataset):
    from vlaprune.evaluate.offline import offline_eval

    data = Data(wrap(smolvla), DatasetConfig(root=str(tiny_dataset)))
    _, held = data.split(0.34)
    assert held == [2]
    a = offline_eval(smolvla, data, held, batch_size=8)
    b = offline_eval(smolvla, data, held, batch_size=8)
    assert a == b
    assert a["frames"] == 20 and len(a["l1_per_dim"]) == 4 and a["l1"] > 0 and a["loss"] > 0


def test_metaworld_episodes_parallel(smolvla, tiny_dataset):
    pre, post = pre_post(smolvla, tiny_dataset)
    res = rollouts(
        smolvla, pre, post, "metaworld", "reach-v3", [100000, 100001], n_envs=2, env_kw={"max_steps": 8}
    )
    assert [r["seed"] for r in res] == [100000, 100001]
    assert all(r["steps"] <= 8 for r in res)
    s = summarize(res)
    assert s["episodes"] == 2 and s["ci95"] == pytest.approx(list(wilson(s["successes"], 2)))


def test_pusht_episode(smolvlm_dir, tmp_path):
    from vlaprune.tiny.dataset import write_tiny_dataset
    from vlaprune.tiny.smolvla import tiny_smolvla

    data = write_tiny_dataset(
        tmp_path / "pusht", episodes=2, frames=8, state_dim=2, action_dim=2, image_size=96
    )
    policy = tiny_smolvla(smolvlm_dir, state_dim=2, action_dim=2)
    pre, post = pre_post(policy, data)
    res = rollouts(policy, pre, post, "pusht", "PushT-v0", [7], env_kw={"max_steps": 10}, camera="blank")
    assert res[0]["steps"] == 10 and res[0]["success"] is False


def test_eval_cli_offline_closed_loop_and_probes(tiny_dataset, tmp_path):
    out = tmp_path / "eval.json"
    args = [
        "eval",
        "--policy.path=tiny:smolvla",
        f"--dataset.root={tiny_dataset}",
        "--offline=true",
        "--holdout=0.34",
        "--env.type=metaworld",
        "--env.task=reach-v3,drawer-close-v3",
        "--env.max_steps=5",
        "--eval.n_episodes=2",
        "--language_probe=true",
        "--vision_probe=true",
        f"--output={out}",
    ]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["offline"]["frames"] == 20
    conds = res["closed_loop"]
    assert set(conds) == {
        "normal",
        "instruction:empty",
        "instruction:other",
        "instruction:shuffled",
        "camera:blank",
        "camera:other_seed",
    }
    for c in conds.values():
        assert set(c["tasks"]) == {"reach-v3", "drawer-close-v3"}
        for t in c["tasks"].values():
            assert t["episodes"] == 2 and 0 <= t["ci95"][0] <= t["success_rate"] <= t["ci95"][1] <= 1
    assert conds["instruction:empty"]["tasks"]["reach-v3"]["instruction"] == ""
    assert conds["instruction:other"]["tasks"]["reach-v3"]["instruction"] != "reach the red goal"


def test_eval_bad_input(tiny_dataset, tmp_path, cli_error):
    from vlaprune.tiny.dataset import write_tiny_dataset

    bad = write_tiny_dataset(tmp_path / "front", episodes=1, frames=6, cameras=("front",))
    out = tmp_path / "e.json"
    base = ["--policy.path=tiny:smolvla", f"--dataset.root={tiny_dataset}"]
    cases = [
        (base + ["--env.type=atari", "--env.task=pong"], "unknown --env.type"),
        (base + ["--env.type=metaworld", "--env.task=make-coffee-v3"], "unknown MetaWorld task"),
        (base + ["--env.type=pusht", "--env.task=PushT-v0"], "2-D state but the policy expects 4-D"),
        (["--policy.path=tiny:smolvla", f"--dataset.root={bad}", "--offline=true"], "no feature"),
        (base, "nothing to evaluate"),
        (
            base + ["--env.type=metaworld", "--env.task=reach-v3", "--eval.n_episodes=0"],
            "at least one episode",
        ),
        (base + ["--env.type=metaworld", "--env.task=reach-v3", "--eval.seed=-1"], "--eval.seed=-1"),
        (
            ["--policy.path=tiny:smolvla", "--env.type=metaworld", "--env.task=reach-v3"],
            "normalization statistics",
        ),
    ]
    for args, message in cases:
        argv = ["eval", "--env.max_steps=2", "--eval.n_episodes=1", *args, f"--output={out}"]
        assert message in cli_error(argv, only=False), args
        assert not out.exists()
