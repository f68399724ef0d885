"""A tiny LeRobotDataset (v3, images stored in parquet) written offline in a few seconds, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_libero_like_dataset(root: str | Path, **kw) -> Path:
    """A tiny dataset shaped like LIBERO's for OpenVLA-OFT (`vlaprune.tiny.oft.write_tiny_oft`): cameras
    `image` and `wrist_image`, 8-D state, 7-D actions, 32x32 images. Name the folder after the suite (e.g.
    .../libero_spatial): OFT's statistics key and chunk length come from it."""
    kw = {"state_dim": 8, "action_dim": 7, "cameras": ("image", "wrist_image"), "image_size": 32} | kw
    return write_tiny_dataset(root, **kw)


def write_tiny_dataset(
    root: str | Path,
    *,
    episodes: int = 3,
    frames: int = 20,
    state_dim: int = 4,
    action_dim: int = 4,
    image_size: int = 64,
    cameras: tuple[str, ...] = ("top",),
    fps: int = 10,
    seed: int = 0,
    tasks: tuple[str, ...] = ("open the drawer", "press the button from the top"),
) -> Path:
    """Random-walk states, actions that depend on the state (learnable), random images, a task per episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        f"observation.images.{c}": {
            "dtype": "image",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
        for c in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    root = Path(root)
    ds = LeRobotDataset.create(f"local/{root.name}", fps=fps, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((state_dim, action_dim)).astype(np.float32)
    for ep in range(episodes):
        state = rng.standard_normal(state_dim).astype(np.float32)
        for _ in range(frames):
            frame = {
                f"observation.images.{c}": rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
                for c in cameras
            }
            action = np.tanh(state @ mix) + 0.05 * rng.standard_normal(action_dim).astype(np.float32)
            frame.update(
                {
                    "observation.state": state.copy(),
                    "action": action.astype(np.float32),
                    "task": tasks[ep % len(tasks)],
                }
            )
            ds.add_frame(frame)
            state = (state + 0.1 * action[:state_dim] if action_dim >= state_dim else state).astype(
                np.float32
            )
        ds.save_episode()
    ds.finalize()
    return root
