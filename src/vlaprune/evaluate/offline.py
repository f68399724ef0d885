"""Offline evaluation on held-out episodes of a LeRobotDataset: the policy's own loss and its action error.

Action error compares `predict_action_chunk` (normalized action space, noise seeded per batch) with the
recorded normalized action chunk, over the steps that are not padding: L1 and MSE per action dimension and
overall. Batches are read in order (or, with `max_batches`, as a seeded random subset) and noise is seeded
per batch, so numbers reproduce.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vlaprune.errors import VlapruneError
from vlaprune.scoring.calibration import DatasetConfig, load_dataset, noise_seed, policy_loss, processors


def split_episodes(
    cfg: DatasetConfig, policy: nn.Module, holdout: float, flag: str = "--eval.holdout"
) -> tuple[list[int], list[int]]:
    """(training episodes, held-out episodes): the last `holdout` fraction of each task's episodes."""
    if not 0 < holdout < 1:
        raise VlapruneError(f"{flag}={holdout}: must be in (0, 1)")
    meta = load_dataset(policy, cfg).meta
    by_task: dict[str, list[int]] = {}
    for ep in meta.episodes:
        task = ep["tasks"][0] if isinstance(ep["tasks"], list) and ep["tasks"] else str(ep["tasks"])
        by_task.setdefault(task, []).append(int(ep["episode_index"]))
    train, held = [], []
    for eps in by_task.values():
        k = max(1, round(holdout * len(eps))) if len(eps) > 1 else 0
        train += eps[: len(eps) - k]
        held += eps[len(eps) - k :]
    if not held:
        raise VlapruneError(f"too few episodes to hold any out; add episodes or set {flag}=0")
    return sorted(train), sorted(held)


def split_dataset(
    cfg: DatasetConfig, policy: nn.Module, holdout: float, flag: str = "--eval.holdout"
) -> tuple[DatasetConfig, DatasetConfig | None]:
    """(training part, held-out part) of `cfg` (see split_episodes); no split, (cfg, None), when `holdout`
    is 0 or the episodes are given explicitly."""
    if holdout <= 0 or cfg.episodes is not None:
        return cfg, None
    train, held = split_episodes(cfg, policy, holdout, flag)
    return dataclasses.replace(cfg, episodes=train), dataclasses.replace(cfg, episodes=held)


def held_out(cfg: DatasetConfig, policy: nn.Module, holdout: float) -> DatasetConfig:
    """The dataset config restricted to held-out episodes (the last `holdout` fraction of each task's)."""
    return split_dataset(cfg, policy, holdout)[1] or cfg


def action_error(
    policy: nn.Module, batch: dict, i: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum |error|, sum error^2, steps) of batch i's predicted action chunk against the recorded one.

    Normalized action space; the sums are per action dimension, shape (A,), over the non-padding steps;
    the sampling noise is fixed by (seed, i).
    """
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(noise_seed(seed, i))
        policy.reset()
        pred = policy.predict_action_chunk(dict(batch))  # (B, chunk, A), normalized
    target = batch["action"][:, : pred.shape[1], : pred.shape[2]]
    pad = batch.get("action_is_pad", torch.zeros(target.shape[:2], dtype=torch.bool, device=target.device))
    diff = (pred - target)[~pad[:, : pred.shape[1]]]  # (valid steps, A)
    return diff.abs().sum(0), (diff**2).sum(0), diff.shape[0]


def offline_eval(
    policy: nn.Module,
    cfg: DatasetConfig,
    *,
    batch_size: int = 8,
    max_batches: int = 0,
    seed: int = 0,
    policy_path: str | None = None,
) -> dict[str, Any]:
    dataset = load_dataset(policy, cfg)
    pre = processors(policy, dataset, policy_path)
    # all frames in order; or, with max_batches, a seeded random subset (reproducible, spans all episodes)
    sampler = (
        None
        if not max_batches
        else torch.utils.data.RandomSampler(
            dataset,
            num_samples=min(len(dataset), max_batches * batch_size),
            generator=torch.Generator().manual_seed(seed),
        )
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    loss_fn = policy_loss(policy, seed)
    losses, abs_err, sq_err, counts, frames = [], None, None, 0, 0
    for i, raw in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        batch = pre(raw)
        frames += len(raw["index"])
        with torch.no_grad():
            losses.append(float(loss_fn(i, batch)) * len(raw["index"]))
        err = action_error(policy, batch, i, seed)
        abs_err = err[0] if abs_err is None else abs_err + err[0]
        sq_err = err[1] if sq_err is None else sq_err + err[1]
        counts += err[2]
    if not counts:
        raise VlapruneError("no held-out frames to evaluate; check --dataset.episodes / --eval.holdout")
    l1, mse = (abs_err / counts), (sq_err / counts)
    return {
        "loss": sum(losses) / frames,
        "l1": float(l1.mean()),
        "mse": float(mse.mean()),
        "l1_per_dim": [round(float(x), 6) for x in l1],
        "mse_per_dim": [round(float(x), 6) for x in mse],
        "frames": frames,
        "action_steps": counts,
        "episodes": cfg.episodes,
    }
