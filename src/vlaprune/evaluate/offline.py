"""Offline evaluation on held-out episodes of a LeRobotDataset: the policy's own loss and its action error.

Action error compares `predict_action_chunk` (normalized action space, noise seeded per batch) with the
recorded normalized action chunk, over the steps that are not padding: L1 and MSE per action dimension and
overall. Batches are read in order (or, with `max_batches`, as a seeded random subset) and noise is seeded
per batch, so numbers reproduce.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlaprune.data import Data, action_error, policy_loss
from vlaprune.errors import VlapruneError


def offline_eval(
    policy: nn.Module,
    data: Data,
    episodes: list[int] | None = None,
    *,
    batch_size: int = 8,
    max_batches: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss and action error of `policy` (a module: the data's policy or a pruned / recovered version of it,
    same processors) on the frames of `episodes` (default: all of the data's)."""
    frames = data.frames(episodes)
    pre = data.processors()[0]
    # all frames in order; or, with max_batches, a seeded random subset (reproducible, spans all episodes)
    sampler = (
        None
        if not max_batches
        else torch.utils.data.RandomSampler(
            frames,
            num_samples=min(len(frames), max_batches * batch_size),
            generator=torch.Generator().manual_seed(seed),
        )
    )
    loader = torch.utils.data.DataLoader(frames, batch_size=batch_size, sampler=sampler)
    loss_fn = policy_loss(policy, seed)
    losses, abs_err, sq_err, counts, n_frames = [], None, None, 0, 0
    for i, raw in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        batch = pre(raw)
        n_frames += len(raw["index"])
        with torch.no_grad():
            losses.append(float(loss_fn(i, batch)) * len(raw["index"]))
        err = action_error(policy, batch, i, seed)
        abs_err = err[0] if abs_err is None else abs_err + err[0]
        sq_err = err[1] if sq_err is None else sq_err + err[1]
        counts += err[2]
    if not counts:
        raise VlapruneError("no held-out frames to evaluate; check --dataset.episodes / --holdout")
    l1, mse = (abs_err / counts), (sq_err / counts)
    return {
        "loss": sum(losses) / n_frames,
        "l1": float(l1.mean()),
        "mse": float(mse.mean()),
        "l1_per_dim": [round(float(x), 6) for x in l1],
        "mse_per_dim": [round(float(x), 6) for x in mse],
        "frames": n_frames,
        "action_steps": counts,
        "episodes": episodes if episodes is not None else data.cfg.episodes,
    }
