"""Plain OpenVLA (action tokens) in closed loop on LIBERO, as OpenVLA's own evaluation runs it (github
openvla/openvla: experiments/robot/libero/run_libero_eval.py, libero_utils.py, openvla_utils.py,
robot_utils.py; written from them, not copied). It is OFT's pipeline (`closed_loop`) with OpenVLA's choices:

    env step   the LIBERO env of `vlaprune.evaluate.envs.libero` (256 px, images rotated by 180 degrees, the
               10 wait steps with the dummy action [0, 0, 0, 0, 0, 0, -1] inside reset); OpenVLA's per-suite
               step caps (the same as OFT's: spatial 220, object 280, goal 300, libero_10 520, libero_90 400)
    image      the third-person camera only (`agentview_image`; no wrist camera, no proprio): JPEG round trip
               + Lanczos-3 antialiased resize to 224 (`closed_loop.resize`), center crop of 0.9 area resized
               back to 224 (OpenVLA's center_crop=True), per tower resized and normalized (PrismaticProcessor)
    prompt     <s> "In: What action should the robot take to {task.lower()}?\\nOut:" + the empty token that
               predict_action appends (Llama-2's 29871)
    action     one per step: 7 tokens decoded greedily (`tokens.greedy_tokens`), token -> bin center ->
               un-normalized with the unnorm key's q01 / q99 where `mask` (OpenVLA's rule, no epsilon); the
               gripper [0, 1] -> sign(2g - 1), then inverted (normalize_gripper_action(binarize=True),
               invert_gripper_action)

Statistics: the folder's dataset_statistics.json (OpenVLA's get_vla replaces norm_stats with it), else the
config's norm_stats; the unnorm key is the suite name or the suite name + "_no_noops", as run_libero_eval.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from vlaprune.adapters.openvla import closed_loop as oft
from vlaprune.adapters.openvla import tokens
from vlaprune.adapters.openvla.policy import OpenVLAPolicy
from vlaprune.errors import VlapruneError

CAMERA = oft.CAMERAS[0]  # agentview


class OpenVLALibero(nn.Module):
    """A plain OpenVLA with the interface closed-loop rollouts drive (`config.input_features`, `reset`,
    `select_action`, `predict_chunk` on the raw env batch), one action per step (see the module docstring).

    suite: the LIBERO suite (picks the unnorm key); crop: center-crop (OpenVLA's center_crop)."""

    def __init__(self, policy: OpenVLAPolicy, suite: str, crop: bool = True) -> None:
        super().__init__()
        from lerobot.configs.types import FeatureType, PolicyFeature

        from vlaprune.adapters.openvla.batch import image_settings

        folder = getattr(policy, "folder", None)
        if folder is None or not any(Path(folder).glob("tokenizer*")):
            raise VlapruneError(
                f"{folder or 'this OpenVLA'} has no tokenizer files; OpenVLA's prompt needs them"
            )
        self.policy, self.suite, self.crop = policy, suite, crop
        stats = tokens.statistics(policy)
        self.stats = stats[oft.unnorm_key(stats, suite)]["action"]
        self.towers = image_settings(Path(folder), policy)
        self.tok = oft._tokenizer(str(folder))
        feature = PolicyFeature(FeatureType.VISUAL, (3, oft.IMAGE_SIZE, oft.IMAGE_SIZE))
        self.config = SimpleNamespace(input_features={CAMERA: feature})
        self.env_defaults = {"max_steps": oft.OFT_MAX_STEPS[suite]} if suite in oft.OFT_MAX_STEPS else {}

    def reset(self) -> None:
        """Nothing to drop: one action per step, no queue."""

    def observation(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Raw env batch (camera (B, 3, H, W) in [0, 1], task) -> prompt ids (B, T), pixels (B, 6, S, S)."""
        rows = []
        for b in range(len(batch["task"])):
            img = (batch[CAMERA][b].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # (H, W, 3)
            img = oft.resize(img)
            rows.append(oft.tower_pixels(oft.center_crop(img) if self.crop else img, self.towers))
        ids = torch.tensor([oft.prompt_ids(self.tok, t) for t in batch["task"]])  # one task per batch
        return {"input_ids": ids, "pixel_values": torch.stack(rows)}

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any]) -> np.ndarray:
        """(B, 1, A) environment actions for the raw env batch."""
        obs = self.observation(batch)
        device = next(self.policy.parameters()).device
        cfg = self.policy.vla.config
        ids = tokens.greedy_tokens(
            self.policy.vla,
            obs["input_ids"].to(device),
            obs["pixel_values"].to(device),
            len(self.stats["q01"]),
        )
        norm = tokens.normalized_actions(
            ids.cpu().numpy(), tokens.decode_vocab(cfg), getattr(cfg, "n_action_bins", tokens.N_BINS)
        )
        return oft.gripper(tokens.unnormalize(norm, self.stats))[:, None]

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.as_tensor(self.predict_chunk(batch)[:, 0], dtype=torch.float32)
