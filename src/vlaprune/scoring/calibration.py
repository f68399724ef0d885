"""Calibration batches from a LeRobotDataset, and the policy's own training loss on them, reproducibly.

Every scoring method sees the same batches and the same loss: batch i is drawn by a DataLoader seeded with
`seed`, preprocessed by the policy's processor pipeline (its saved one when the checkpoint has it, else a
fresh one with the dataset's statistics), and its loss is computed with the global RNG seeded to
`noise_seed(seed, i)`, so the flow-matching noise and time samples (SmolVLA, pi0, pi0.5) are fixed per
batch whatever gates or hooks are active. The loss is computed in eval mode (no dropout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlaprune.errors import VlapruneError

LossFn = Callable[[int, dict], torch.Tensor]


@dataclass
class DatasetConfig:
    # LeRobotDataset repo id (e.g. lerobot/libero_spatial); with `root`, read from that local folder.
    repo_id: str = ""
    # Local dataset folder (holds meta/info.json); nothing is downloaded when it exists.
    root: str | None = None
    # Episodes to draw calibration frames from (default: all).
    episodes: list[int] | None = None


def noise_seed(seed: int, batch_index: int) -> int:
    return seed * 1_000_003 + batch_index


def load_dataset(policy: nn.Module, cfg: DatasetConfig, image_transforms=None):
    """The LeRobotDataset with the policy's action-chunk timestamps; checks its features fit the policy."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    if not cfg.repo_id and not cfg.root:
        raise VlapruneError("no dataset given; pass --dataset.repo_id=ORG/NAME and/or --dataset.root=FOLDER")
    if cfg.root and not (Path(cfg.root) / "meta" / "info.json").is_file():
        raise VlapruneError(f"--dataset.root {cfg.root} is not a LeRobotDataset (no meta/info.json)")
    repo_id = cfg.repo_id or f"local/{Path(cfg.root).name}"
    try:
        meta = LeRobotDatasetMetadata(repo_id, root=cfg.root)
    except Exception as e:
        raise VlapruneError(f"cannot open dataset {repo_id!r}: {type(e).__name__}: {str(e)[:200]}") from None
    check_features(policy, meta.features)
    delta = resolve_delta_timestamps(policy.config, meta)
    return LeRobotDataset(
        repo_id,
        root=cfg.root,
        episodes=cfg.episodes,
        delta_timestamps=delta,
        image_transforms=image_transforms,
    )


def check_features(policy: nn.Module, features: dict) -> None:
    """Every input/output feature of the policy must be in the dataset; state/action sizes must match."""
    from lerobot.configs.types import FeatureType

    wanted = {**policy.config.input_features, **policy.config.output_features}
    for key, feat in wanted.items():
        if key not in features:
            have = ", ".join(k for k in features if k.startswith(("observation", "action")))
            raise VlapruneError(
                f"the dataset has no feature {key!r} that the policy needs (it has: {have}); "
                "use a dataset recorded for this policy or rename its features"
            )
        if feat.type is not FeatureType.VISUAL and tuple(features[key]["shape"]) != tuple(feat.shape):
            raise VlapruneError(
                f"feature {key!r} has shape {tuple(features[key]['shape'])} in the dataset but "
                f"{tuple(feat.shape)} in the policy; the dataset does not match this policy"
            )


def processors(policy: nn.Module, dataset, policy_path: str | None = None):
    """The policy's preprocessor (see `pre_post`)."""
    return pre_post(policy, dataset, policy_path)[0]


def pre_post(policy: nn.Module, dataset=None, policy_path: str | None = None):
    """(preprocessor, postprocessor): the pipelines saved with the checkpoint at `policy_path` if it has
    them, else fresh ones normalized with `dataset`'s statistics."""
    from lerobot.policies.factory import make_pre_post_processors

    from vlaprune.tiny.hub import redirect_tokenizers

    saved = bool(policy_path) and (Path(policy_path) / "policy_preprocessor.json").is_file()
    if not saved and dataset is None:
        raise VlapruneError(
            "the policy's normalization statistics are needed: use a checkpoint saved with its processors "
            "(policy_preprocessor.json) or pass --dataset.repo_id / --dataset.root"
        )
    with redirect_tokenizers(policy):
        if saved:
            return make_pre_post_processors(policy.config, pretrained_path=policy_path)
        return make_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)


def calibration_batches(
    policy: nn.Module,
    cfg: DatasetConfig,
    n_batches: int,
    batch_size: int,
    seed: int = 0,
    policy_path: str | None = None,
) -> list[dict]:
    """`n_batches` preprocessed batches of `batch_size` frames, the same for the same seed."""
    if n_batches < 1 or batch_size < 1:
        raise VlapruneError(f"need at least one batch of at least one frame (got {n_batches} x {batch_size})")
    dataset = load_dataset(policy, cfg)
    if len(dataset) < batch_size:
        raise VlapruneError(f"the dataset has {len(dataset)} frames, fewer than --batch_size={batch_size}")
    pre = processors(policy, dataset, policy_path)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    device = next(policy.parameters()).device
    batches = []
    for batch in loader:
        batch = pre(batch)
        batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        if len(batches) == n_batches:
            break
    return batches


def policy_loss(policy: nn.Module, seed: int = 0) -> LossFn:
    """loss(i, batch): the policy's own training loss on batch i with noise/time fixed by (seed, i)."""
    device = next(policy.parameters()).device
    devices = [device] if device.type == "cuda" else []

    def loss(i: int, batch: dict) -> torch.Tensor:
        policy.eval()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(noise_seed(seed, i))
            value, _ = policy.forward(dict(batch))
        if not torch.isfinite(value):
            raise VlapruneError(
                f"the loss is {value.item()} on calibration batch {i}; check the checkpoint and the "
                "dataset's normalization statistics (a constant feature gives zero std)"
            )
        return value

    return loss
