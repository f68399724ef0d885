"""LIBERO closed loop: config written offline, the observation lerobot feeds LIBERO policies, reproducible
initial states, `vlaprune eval` end to end; several cameras and their probes in `rollouts`."""

import json
import os
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from vlaprune.cli import main
from vlaprune.errors import VlapruneError
from vlaprune.evaluate import envs
from vlaprune.evaluate.closed_loop import close_envs, rollouts, wilson

TASK0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def test_config_written_unless_the_user_has_one(tmp_path, monkeypatch):
    from vlaprune.evaluate.envs.libero import configure

    monkeypatch.setenv("LIBERO_CONFIG_PATH", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = configure()
    assert folder.parent == tmp_path / "cache" / "vlaprune" / "libero"
    assert os.environ["LIBERO_CONFIG_PATH"] == str(folder)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert set(cfg) == {"benchmark_root", "bddl_files", "init_states", "datasets", "assets"}
    assert os.path.isdir(os.path.join(cfg["bddl_files"], "libero_spatial"))
    assert os.path.isdir(os.path.join(cfg["init_states"], "libero_spatial"))
    assert {"scenes", "articulated_objects", "stable_hope_objects"} <= set(os.listdir(cfg["assets"]))

    user = tmp_path / "mine"
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(user))
    with pytest.raises(VlapruneError, match="has no config.yaml"):
        configure()
    user.mkdir()
    (user / "config.yaml").write_text("assets: /somewhere/else\n")
    assert configure() == user and (user / "config.yaml").read_text() == "assets: /somewhere/else\n"


def test_libero_observation_is_lerobots_and_seeds_pick_init_states():
    from robosuite.utils.transform_utils import quat2axisangle

    env = envs.make("libero", "libero_spatial/0", image_size=64, max_steps=2)
    try:
        assert env.instruction == TASK0 and env.max_steps == 2
        assert envs.make("libero", "libero_spatial/0").max_steps == 280  # lerobot's cap for the suite
        a, info = env.reset(seed=100_000)
        assert set(a["pixels"]) == {"image", "image2"} and info == {"success": False}
        for img in a["pixels"].values():
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 5
        assert a["agent_pos"].shape == (8,) and a["agent_pos"].dtype == np.float32
        # The state and images lerobot-eval gives a LIBERO policy: eef xyz, axis-angle, gripper; rotated 180°.
        raw = env.env._env.env._get_observations()
        np.testing.assert_allclose(a["agent_pos"][:3], raw["robot0_eef_pos"], rtol=1e-6)
        np.testing.assert_allclose(a["agent_pos"][3:6], quat2axisangle(raw["robot0_eef_quat"]), atol=1e-5)
        np.testing.assert_allclose(a["agent_pos"][6:], raw["robot0_gripper_qpos"], rtol=1e-6)
        np.testing.assert_array_equal(a["pixels"]["image"], raw["agentview_image"][::-1, ::-1])
        np.testing.assert_array_equal(a["pixels"]["image2"], raw["robot0_eye_in_hand_image"][::-1, ::-1])

        b, _ = env.reset(seed=100_001)
        c, _ = env.reset(seed=100_000)
        assert not np.array_equal(a["agent_pos"], b["agent_pos"])  # another fixed initial state
        np.testing.assert_array_equal(a["agent_pos"], c["agent_pos"])  # the same seed: the same observation
        for cam in a["pixels"]:
            np.testing.assert_array_equal(a["pixels"][cam], c["pixels"][cam])
        d, _ = env.reset(seed=100_050)  # 100_050 % 50 == 100_000 % 50: the same initial state
        np.testing.assert_array_equal(a["agent_pos"], d["agent_pos"])
        steps = [env.step(np.zeros(7, np.float32)) for _ in range(2)]
        assert [s[3] for s in steps] == [False, True] and steps[-1][4] == {"success": False}
    finally:
        env.close()


@pytest.fixture(scope="module")
def libero_policy(smolvlm_dir, tmp_path_factory):
    """A tiny SmolVLA with LIBERO's features (two cameras, 8-D state, 7-D action) saved as a checkpoint, and a
    dataset with the same features for its normalization statistics."""
    from vlaprune.tiny.dataset import write_tiny_dataset
    from vlaprune.tiny.smolvla import tiny_smolvla

    tmp = tmp_path_factory.mktemp("libero")
    cams = ("image", "image2")
    data = write_tiny_dataset(
        tmp / "data", episodes=2, frames=6, state_dim=8, action_dim=7, cameras=cams, tasks=(TASK0,)
    )
    tiny_smolvla(smolvlm_dir, state_dim=8, action_dim=7, cameras=cams).save_pretrained(tmp / "policy")
    return tmp / "policy", data


def test_eval_cli_libero_end_to_end(libero_policy, tmp_path):
    policy, data = libero_policy
    out = tmp_path / "eval.json"
    args = [
        "eval",
        f"--policy.path={policy}",
        f"--dataset.root={data}",
        "--env.type=libero",
        "--env.task=libero_spatial/0",
        "--env.max_steps=3",
        "--env.image_size=64",
        "--eval.n_episodes=2",
        f"--output={out}",
    ]
    try:
        assert main(args) == 0
    finally:
        close_envs()  # a LIBERO simulator holds ~1 GB
    res = json.loads(out.read_text())
    task = res["closed_loop"]["normal"]["tasks"]["libero_spatial/0"]
    assert task["instruction"] == TASK0 and task["episodes"] == 2
    assert [e["seed"] for e in task["episodes_detail"]] == [100_000, 100_001]
    assert all(e["steps"] <= 3 for e in task["episodes_detail"])
    assert task["ci95"] == pytest.approx(list(wilson(task["successes"], 2)))
    assert res["closed_loop"]["normal"]["mean_success"] == task["success_rate"]


def test_eval_libero_bad_tasks(libero_policy, tmp_path, capsys):
    policy, data = libero_policy
    out = tmp_path / "e.json"
    cases = [
        ("libero_spatail", "unknown LIBERO suite 'libero_spatail'; choose one of libero_spatial, libero_obj"),
        ("libero_spatial/10", "libero_spatial has tasks libero_spatial/0 .. libero_spatial/9"),
        ("libero_goal/x", "unknown LIBERO task 'libero_goal/x'"),
    ]
    for task, message in cases:
        capsys.readouterr()
        args = [f"--policy.path={policy}", f"--dataset.root={data}", "--env.type=libero"]
        assert main(["eval", *args, f"--env.task={task}", f"--output={out}"]) == 2, task
        err = capsys.readouterr().err.strip().splitlines()
        assert err and message in err[-1] and err[-1].startswith("vlaprune: error:"), (task, err)
        assert not out.exists()


class TwoCameraEnv(gym.Env):
    """A stand-in two-camera env: each camera's frame is constant and says which seed and camera it shows."""

    def __init__(self, task: str, max_steps: int = 3):
        self.instruction, self.max_steps = "do it", max_steps
        image = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Dict({"image": image, "image2": image}),
                "agent_pos": gym.spaces.Box(-1, 1, (8,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1, 1, (7,), np.float32)
        self._seed = 0

    def _obs(self) -> dict:
        cams = ("image", "image2")
        frame = {c: np.full((8, 8, 3), self._seed % 200 + i, np.uint8) for i, c in enumerate(cams)}
        return {"pixels": frame, "agent_pos": np.zeros(8, np.float32)}

    def reset(self, *, seed=None, options=None):
        self._seed = seed or 0
        return self._obs(), {"success": False}

    def step(self, action):
        return self._obs(), 0.0, False, False, {"success": False}


def _recording_policy(cameras):
    """A policy stand-in with these camera features; records the batches it is given."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    feats = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 8, 8)) for c in cameras}
    feats["observation.state"] = PolicyFeature(FeatureType.STATE, (8,))
    seen = []
    policy = SimpleNamespace(
        config=SimpleNamespace(input_features=feats),
        reset=lambda: None,
        select_action=lambda batch: seen.append(batch) or torch.zeros(len(batch["task"]), 7),
    )
    return policy, seen


def test_rollouts_feed_every_camera_and_probe_them_all(monkeypatch):
    monkeypatch.setitem(envs.ENVS, "twocam", TwoCameraEnv)
    policy, seen = _recording_policy(("image", "image2"))
    ident = lambda x: x  # noqa: E731

    def cameras_seen(camera):
        seen.clear()
        rollouts(policy, ident, ident, "twocam", "t", [10], camera=camera)
        first = seen[0]  # the batch of the first step; each camera's constant value
        return tuple(round(float(first[f"observation.images.{c}"].max()) * 255) for c in ("image", "image2"))

    assert cameras_seen(None) == (10, 11)
    assert cameras_seen("blank") == (0, 0)
    other = 999_999 % 200  # the probe's other seed: its frame of each camera, frozen
    assert cameras_seen("other_seed") == (other, other + 1)
    assert len(seen) == 3 and all(b["task"] == ["do it"] for b in seen)

    wrist, _ = _recording_policy(("image", "wrist"))
    with pytest.raises(VlapruneError, match=r"the env has no wrist; it gives \['image', 'image2'\]"):
        rollouts(wrist, ident, ident, "twocam", "t", [10])
    close_envs()
