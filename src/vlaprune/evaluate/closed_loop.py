"""Closed-loop success in a simulator, with a Wilson 95% interval on every rate.

Episodes run on `n_envs` parallel simulator processes (evaluate/workers.py), scheduled per env so that the
policy and the simulators overlap (evaluate/schedule.py); each episode has its own seed (default range starts
at 100000, seeds a demo recorder would not use). An episode is a success if `info["success"]` turns true
before `max_steps`.

Envs give one image or several named cameras; the policy's `observation.images.<name>` reads the env's camera
`<name>` (a one-camera policy reads a one-camera env whatever the names).

Probes change what the policy is told or shown, and nothing else:
  instruction: "empty" (""), "other" (another task's instruction), "shuffled" (its words, shuffled)
  camera:      "blank" (all-black frames), "other_seed" (one frame of the same task rendered from another
               seed, frozen for the whole episode: the scene without the episode's object / goal positions);
               each applies to every camera
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from vlaprune.adapters import closed_loop_policy, family, inference
from vlaprune.adapters import layout as find_layout
from vlaprune.errors import VlapruneError
from vlaprune.evaluate import envs, schedule, workers
from vlaprune.evaluate.threads import rollout_threads, sized_threads

INSTRUCTION_PROBES = ("empty", "other", "shuffled")
CAMERA_PROBES = ("blank", "other_seed")


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def probe_instruction(instruction: str, mode: str | None, others: list[str], seed: int = 0) -> str:
    if mode is None:
        return instruction
    if mode == "empty":
        return ""
    if mode == "other":
        choices = [o for o in others if o != instruction]
        if not choices:
            raise VlapruneError(
                "the 'other' instruction probe needs at least two tasks with different instructions"
            )
        return choices[seed % len(choices)]
    if mode == "shuffled":
        words = instruction.split()
        random.Random(seed).shuffle(words)
        return " ".join(words)
    raise VlapruneError(f"unknown instruction probe {mode!r}; choose one of {INSTRUCTION_PROBES}")


def io_keys(policy: nn.Module) -> tuple[list[str], str | None]:
    """The policy's camera features and its state feature (None if it takes no state)."""
    from lerobot.configs.types import FeatureType

    feats = policy.config.input_features
    cams = [k for k, f in feats.items() if f.type is FeatureType.VISUAL]
    if not cams:
        raise VlapruneError("closed-loop evaluation feeds camera images; the policy expects none")
    state = [k for k, f in feats.items() if f.type is FeatureType.STATE]
    return cams, (state[0] if state else None)


def camera_map(policy: nn.Module, env_cameras: list[str] | None) -> dict[str, str | None]:
    """Policy image feature -> env camera: `observation.images.<name>` reads the env's camera `<name>`; a
    one-camera policy reads a one-camera env whatever the names (`env_cameras` None: one unnamed image)."""
    cams, _ = io_keys(policy)
    if env_cameras is None or (len(cams) == 1 and len(env_cameras) == 1):
        if len(cams) != 1:
            raise VlapruneError(f"the policy expects cameras {cams}; the env gives one image")
        return {cams[0]: env_cameras[0] if env_cameras else None}
    names = {c: c.removeprefix("observation.images.") for c in cams}
    missing = [c for c, n in names.items() if n not in env_cameras]
    if missing:
        raise VlapruneError(
            f"the policy expects cameras {cams} but the env has no {', '.join(names[c] for c in missing)}; "
            f"it gives {env_cameras}"
        )
    return names


def env_cameras(pixels) -> list[str] | None:
    """The camera names of an env's "pixels" (observation or space); None for a single unnamed image."""
    import gymnasium as gym

    return list(pixels.keys()) if isinstance(pixels, dict | gym.spaces.Dict) else None


def check_state(policy: nn.Module, dim: int) -> None:
    _, state = io_keys(policy)
    if state is not None and dim != (want := policy.config.input_features[state].shape[0]):
        raise VlapruneError(
            f"the env gives a {dim}-D state but the policy expects {want}-D; "
            "wrong --env.type / task for this policy?"
        )


def to_batch(policy: nn.Module, obs: dict[str, Any], instructions: list[str]) -> dict[str, Any]:
    """Vectorised env observations -> the raw batch the policy's preprocessor takes."""
    _, state = io_keys(policy)
    pixels = obs["pixels"]
    batch: dict[str, Any] = {"task": list(instructions)}
    for key, cam in camera_map(policy, env_cameras(pixels)).items():
        img = pixels if cam is None else pixels[cam]  # (B, H, W, 3) uint8
        batch[key] = torch.from_numpy(np.ascontiguousarray(img)).permute(0, 3, 1, 2).float() / 255
    if state is not None:
        pos = torch.from_numpy(np.asarray(obs["agent_pos"], np.float32))
        check_state(policy, pos.shape[-1])
        batch[state] = pos
    return batch


def map_pixels(pixels, fn: Callable):
    """Apply `fn` to every camera's images (one array, or a dict camera -> array)."""
    return {k: fn(k, v) for k, v in pixels.items()} if isinstance(pixels, dict) else fn(None, pixels)


first_camera = schedule.first_camera


def frozen(frame, cam: str | None, like: np.ndarray) -> np.ndarray:
    """Camera `cam` of one env's frame, repeated for every env of the batch `like`."""
    return np.broadcast_to(frame if cam is None else frame[cam], like.shape).copy()


@contextlib.contextmanager
def noise_rows(policy: nn.Module):
    """While active, row i of every noise draw of the policy's sampler comes from generator i of the yielded
    list (set it before each call), drawn on the CPU: with one generator per episode seeded by its seed, an
    episode's noise is a function of its seed and of how many chunks it has asked for, whatever the batch,
    the device or what ran before."""
    gens: list[torch.Generator] = []
    # a family's closed-loop pipeline (e.g. OFT's LIBERO loop) names its sampler as `noise_module`;
    # unknown policies: their own RNG
    where = find_layout(policy).noise if family(policy) else getattr(policy, "noise_module", None)
    if where is None:
        yield gens
        return
    owner = policy.get_submodule(where) if where else policy

    def sample_noise(shape, device):  # (B, chunk, action_dim), standard normal like lerobot's own
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in gens]
        return torch.stack(rows).to(device)

    owner.sample_noise = sample_noise  # an instance attribute shadows the class method
    try:
        yield gens
    finally:
        del owner.sample_noise


@contextlib.contextmanager
def episode_noise(policy: nn.Module, seeds: list[int]):
    """While active, row i of every noise draw comes from a generator seeded by `seeds[i]` (noise_rows)."""
    with noise_rows(policy) as gens:
        gens[:] = [torch.Generator().manual_seed(int(s)) for s in seeds]
        yield


def _same(x):
    return x


def close_envs() -> None:
    """Close every cached simulator."""
    workers.close_all()


def rollouts(
    policy: nn.Module,
    pre,
    post,
    env_type: str,
    task: str,
    seeds: list[int],
    *,
    n_envs: int = 1,
    instruction: str | None = None,
    camera: str | None = None,
    env_kw: dict | None = None,
    video_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One result {seed, success, steps, return} per seed (the episode is a function of the seed: scene and
    policy noise both follow it). `instruction` overrides the task's instruction;
    `camera` applies a camera probe (to every camera); videos show the env's first camera. A family with its
    own closed-loop pipeline (OpenVLA-OFT on LIBERO) runs it instead of `pre` / `post`. Episodes are
    scheduled per env (evaluate/schedule.py), or in groups of n_envs for policies without a chunk queue."""
    own = closed_loop_policy(policy, env_type, task)
    if own is not None:
        policy, pre, post = own, _same, _same
    env_kw = {**(own.env_defaults if own is not None else {}), **(env_kw or {})}
    factory = functools.partial(envs.make, env_type, task, **env_kw)
    probe_env = envs.make(env_type, task, **env_kw)
    text = probe_env.instruction if instruction is None else instruction
    max_steps = probe_env.max_steps
    space = probe_env.observation_space
    camera_map(policy, env_cameras(space["pixels"]))  # fail before any simulator starts
    check_state(policy, space["agent_pos"].shape[0])
    other_frame = probe_env.reset(seed=999_999)[0]["pixels"] if camera == "other_seed" else None
    probe_env.close()
    width = max(1, min(n_envs, len(seeds)))
    job = schedule.Job(
        policy,
        schedule.chunk_actions(policy, pre, post),
        text,
        max_steps,
        probe=camera_probe(camera, other_frame),
        video_dir=video_dir or None,
        video_every=width,
        task=task,
        progress=progress,
        to_batch=to_batch,
    )
    sims = workers.simulators(factory, width)  # one set of simulator processes for all episodes of this task
    threads = rollout_threads(0 if sims.local is not None else sims.n)  # evaluate/threads.py
    with sized_threads(threads), noise_rows(policy) as job.noise, inference(policy):
        if job.act is not None:
            return schedule.scheduled(job, sims, seeds)
        return schedule.grouped(job, sims, seeds, lambda b: select(policy, pre, post, b))


def select(policy: nn.Module, pre, post, batch: dict[str, Any]) -> np.ndarray:
    """The policy's next actions (B, D) for a raw env batch, through its select_action."""
    with torch.no_grad():
        return post(policy.select_action(pre(batch))).cpu().numpy()


def camera_probe(camera: str | None, other_frame) -> Callable[[dict], dict]:
    """One observation -> what the policy is shown under the camera probe `camera`."""
    if camera is None:
        return _same
    if camera == "blank":
        return lambda obs: {**obs, "pixels": map_pixels(obs["pixels"], lambda cam, x: np.zeros_like(x))}
    if camera == "other_seed":
        freeze = functools.partial(frozen, other_frame)
        return lambda obs: {**obs, "pixels": map_pixels(obs["pixels"], freeze)}
    raise VlapruneError(f"unknown camera probe {camera!r}; choose one of {CAMERA_PROBES}")


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    k, n = sum(r["success"] for r in results), len(results)
    lo, hi = wilson(k, n)
    return {"success_rate": k / n if n else 0.0, "successes": k, "episodes": n, "ci95": [lo, hi]}
