"""LIBERO suites through lerobot's own LIBERO wrapper, where the `libero` extra is installed.

LIBERO needs its assets and a config file (it asks for a path with `input()` otherwise): set
LIBERO_CONFIG_PATH to a folder holding a `config.yaml` that points at the assets (see README).
"""

from __future__ import annotations

import gymnasium as gym

from vlaprune.errors import VlapruneError


def make_libero(task: str, **kw) -> gym.Env:
    try:
        import libero  # noqa: F401
    except ImportError:
        raise VlapruneError(
            "LIBERO is not installed: run VLAPRUNE_EXTRAS=dev,sim,libero scripts/setup.sh (see README)"
        ) from None
    raise VlapruneError(
        "LIBERO closed-loop evaluation is not wired into vlaprune yet; use lerobot-eval --env.type=libero "
        f"for task {task!r} with the pruned checkpoint (it loads through its family loader or vlaprune.load)"
    )
