"""PushT (gym-pusht) with pixels + agent position, as lerobot's PushT datasets record them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from vlaprune.errors import VlapruneError

TASKS = {"PushT-v0": "push the T-shaped block onto the target"}


class PushTEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str = "PushT-v0", image_size: int = 96, max_steps: int = 300):
        if task not in TASKS:
            raise VlapruneError(f"unknown PushT task {task!r}; choose one of {', '.join(TASKS)}")
        import gym_pusht  # noqa: F401  (registers the env)

        self.env = gym.make(
            f"gym_pusht/{task}",
            obs_type="pixels_agent_pos",
            render_mode="rgb_array",
            observation_width=image_size,
            observation_height=image_size,
        )
        self.task, self.max_steps, self.instruction = task, max_steps, TASKS[task]
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "agent_pos": gym.spaces.Box(0, 512, (2,), np.float32),
            }
        )
        self.action_space = self.env.action_space
        self._t = 0

    @staticmethod
    def _obs(obs: dict) -> dict:
        return {
            "pixels": np.asarray(obs["pixels"], np.uint8),
            "agent_pos": np.asarray(obs["agent_pos"], np.float32),
        }

    def reset(self, *, seed: int | None = None, options=None):
        obs, _ = self.env.reset(seed=seed)
        self._t = 0
        return self._obs(obs), {"success": False}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, np.float32))
        self._t += 1
        success = bool(info.get("is_success", False))
        return (
            self._obs(obs),
            float(reward),
            success or terminated,
            truncated or self._t >= self.max_steps,
            {"success": success},
        )

    def close(self) -> None:
        self.env.close()
