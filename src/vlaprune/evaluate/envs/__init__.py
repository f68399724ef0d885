"""Simulators for closed-loop evaluation, behind one small interface.

`make(env_type, task, **kw)` returns a gymnasium.Env whose observations are {"pixels": (H, W, 3) uint8,
"agent_pos": (D,) float32}, whose `info["success"]` says whether the task is solved, and which carries
`instruction` (the task's language instruction). Rendering defaults to OSMesa (CPU) unless MUJOCO_GL is set.
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
    from vlaprune.evaluate.envs.libero import make_libero

    return make_libero(task, **kw)


ENVS: dict[str, Callable[..., gym.Env]] = {"metaworld": _metaworld, "pusht": _pusht, "libero": _libero}


def make(env_type: str, task: str, **kw) -> gym.Env:
    if env_type not in ENVS:
        raise VlapruneError(f"unknown --env.type={env_type!r}; choose one of {', '.join(ENVS)}")
    return ENVS[env_type](task, **kw)
