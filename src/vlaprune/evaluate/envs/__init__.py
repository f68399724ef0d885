"""Simulators for closed-loop evaluation, behind one small interface.

`make(env_type, task, **kw)` returns a gymnasium.Env whose observations are {"pixels": ..., "agent_pos": (D,)
float32}, where "pixels" is one (H, W, 3) uint8 image for a single-camera env (MetaWorld, PushT) or a dict
camera name -> (H, W, 3) uint8 for several cameras (LIBERO: "image", "image2"); whose `info["success"]` says
whether the task is solved, and which carries `instruction` (the task's language instruction) and `max_steps`
(its episode cap). Keyword arguments every env takes: `image_size`, `max_steps`.
`tasks(env_type, task)` lists the single tasks one `--env.task` entry names (a LIBERO suite names all of its).
Rendering defaults to OSMesa (CPU) unless MUJOCO_GL is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import gymnasium as gym

from vlaprune.errors import VlapruneError

os.environ.setdefault("MUJOCO_GL", "osmesa")
if os.environ["MUJOCO_GL"] == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def _metaworld(task: str, **kw) -> gym.Env:
    from vlaprune.evaluate.envs.metaworld import MetaWorldEnv

    return MetaWorldEnv(task, **kw)


def _pusht(task: str, **kw) -> gym.Env:
    from vlaprune.evaluate.envs.pusht import PushTEnv

    return PushTEnv(task, **kw)


def _libero(task: str, **kw) -> gym.Env:
    from vlaprune.evaluate.envs.libero import LiberoTaskEnv

    return LiberoTaskEnv(task, **kw)


def _libero_tasks(task: str) -> list[str]:
    from vlaprune.evaluate.envs.libero import tasks

    return tasks(task)


ENVS: dict[str, Callable[..., gym.Env]] = {"metaworld": _metaworld, "pusht": _pusht, "libero": _libero}
TASKS: dict[str, Callable[[str], list[str]]] = {"libero": _libero_tasks}  # others: a name is one task


def make(env_type: str, task: str, **kw) -> gym.Env:
    if env_type not in ENVS:
        raise VlapruneError(f"unknown --env.type={env_type!r}; choose one of {', '.join(ENVS)}")
    return ENVS[env_type](task, **kw)


def tasks(env_type: str, task: str) -> list[str]:
    """The single tasks that the `--env.task` entry `task` names (validated where the env knows its tasks)."""
    return TASKS[env_type](task) if env_type in TASKS else [task]
