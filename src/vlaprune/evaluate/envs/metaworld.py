"""MetaWorld v3 tasks as a small gymnasium env made for CPU evaluation and demonstration data.

- random object / goal positions at every reset (`_freeze_rand_vec = False`), a function of `reset(seed=)`
  alone (`seeded_rand_vec = True`: drawn from the env's seeded generator, not from the global np.random);
- the policy sees a (size x size) RGB image from the `topview` camera and `agent_pos` = hand xyz + gripper
  opening only: object and goal positions are never in the state;
- fast CPU rendering (no multisampling, shadows or reflections: ~10x faster than MetaWorld's defaults), each
  frame drawn in the env's own OpenGL context (several envs can live in one process);
- episodes end on success or after `max_steps` (lerobot's wrapper ignores episode length and runs 500).
The full MetaWorld observation (with object / goal poses) stays in `info["full_obs"]` for scripted experts.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from vlaprune.errors import VlapruneError

INSTRUCTIONS = {
    "reach-v3": "reach the red goal",
    "push-v3": "push the puck to the goal",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-v3": "press the button",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "door-open-v3": "open the door",
    "window-open-v3": "open the window",
    "window-close-v3": "close the window",
    "plate-slide-v3": "slide the plate into the goal",
    "handle-press-v3": "press the handle down",
    "faucet-open-v3": "turn the faucet on",
}


def expert(task: str):
    """MetaWorld's own scripted expert policy for `task` (get_action(full_obs) -> action)."""
    from metaworld import policies

    name = "Sawyer" + "".join(w.capitalize() for w in task.removesuffix("-v3").split("-")) + "V3Policy"
    cls = getattr(policies, name, None)
    if cls is None:
        raise VlapruneError(f"MetaWorld has no scripted expert {name} for task {task!r}")
    return cls()


class MetaWorldEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, image_size: int = 64, camera: str = "topview", max_steps: int = 150):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            close = [t for t in ALL_V3_ENVIRONMENTS if task.split("-")[0] in t][:5]
            raise VlapruneError(
                f"unknown MetaWorld task {task!r}; e.g. {', '.join(close or list(ALL_V3_ENVIRONMENTS)[:5])}"
            )
        env = ALL_V3_ENVIRONMENTS[task](
            render_mode="rgb_array", width=image_size, height=image_size, camera_name=camera
        )
        env._partially_observable = False  # experts need the goal; the policy never sees it
        # New object / goal positions at every reset, drawn from the env's own generator (`np_random`, which
        # `seed()` re-creates) rather than from the global np.random: with `seeded_rand_vec` MetaWorld 3.0's
        # `_get_state_rand_vec` uses `self.np_random`, so `reset(seed=s)` gives the same scene in any
        # process whatever ran before (as in lerobot's MetaWorld env). reset() alone continues that stream.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        try:
            del env.sawyer_observation_space  # else the goal in the full observation is clipped to 0
        except AttributeError:
            pass
        env._set_task_called = True
        env.model.vis.quality.offsamples = 0
        self.env, self.task, self.max_steps = env, task, max_steps
        self.instruction = INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "agent_pos": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        self._fast = False
        self._t, self._full = 0, None

    def _render(self) -> np.ndarray:
        # Each env has its own OpenGL context, and gymnasium makes it current only when the viewer is created:
        # with two envs in one process (the simulator cache keeps one local env per task) the other env's
        # context would be current and this scene drawn with its uploaded meshes and textures: other pixels,
        # so another episode than a fresh simulator's for the same seed. Make ours current before every frame.
        self.env.mujoco_renderer._get_viewer("rgb_array").make_context_current()
        img = self.env.render()
        if not self._fast:
            import mujoco

            viewer = self.env.mujoco_renderer._get_viewer("rgb_array")
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._fast = True
            img = self.env.render()
        return np.ascontiguousarray(img)

    def _obs(self, full: np.ndarray) -> dict:
        return {"pixels": self._render(), "agent_pos": np.asarray(full[:4], dtype=np.float32)}

    def reset(self, *, seed: int | None = None, options=None):
        if seed is not None:
            self.env.seed(seed)  # MetaWorld's reset ignores its seed argument; seed() re-creates np_random
        full, info = self.env.reset()
        self._t, self._full = 0, full
        return self._obs(full), {"full_obs": full, "success": False}

    def step(self, action):
        reward, term, trunc, info = self.step_unobserved(action)
        return self._obs(info["full_obs"]), reward, term, trunc, info

    def step_unobserved(self, action) -> tuple[float, bool, bool, dict]:
        """step() without the observation's image (nothing is rendered): (reward, terminated, truncated,
        info). For the steps inside an open-loop chunk, whose observations no policy sees."""
        full, reward, _, _, info = self.env.step(np.clip(np.asarray(action, np.float32), -1, 1))
        self._t += 1
        success = bool(info.get("success", 0.0))
        self._full = full
        return float(reward), success, self._t >= self.max_steps, {"success": success, "full_obs": full}

    def observe(self) -> dict:
        """The observation of the current state (after step_unobserved)."""
        return self._obs(self._full)

    def close(self) -> None:
        self.env.close()
