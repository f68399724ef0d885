"""The data layer: a LeRobotDataset opened once per command, its episode splits, the policy's processors,
calibration batches, and the policy's own loss and action error on them, reproducibly.

    data = Data(policy, DatasetConfig(root="data/mw"))     # policy: a vlaprune.policy.Loaded
    parts = data.splits(test=0.2, validation=0.1)         # per task: train | validation | test (the last)
    batches = data.batches(4, 8, seed=0, episodes=train)   # preprocessed, the same for the same seed
    loss = policy_loss(policy.module, seed=0)              # loss(i, batch) with noise fixed per (seed, i)

Every scoring method and every judge sees the same batches and the same loss: batch i is drawn by a
DataLoader seeded with `seed` and preprocessed by the policy's processor pipeline (its saved one when the
checkpoint has it, else a fresh one with the dataset's statistics), and its loss is computed with the RNG
seeded to `noise_seed(seed, i)`, so the flow-matching noise and time samples (SmolVLA, pi0, pi0.5) are fixed
per batch whatever gates or hooks are active. Losses are computed in eval mode (no dropout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters import family_of
from vlaprune.adapters.lerobot.data import (
    check_features,
    processors,
    redirect_tokenizers,
    warn_degenerate_quantiles,
)
from vlaprune.adapters.lerobot.data import loss as lerobot_loss
from vlaprune.adapters.lerobot.data import predict as lerobot_predict
from vlaprune.configs import DatasetConfig
from vlaprune.errors import VlapruneError
from vlaprune.policy import Loaded

LossFn = Callable[[int, dict], torch.Tensor]

__all__ = [
    "check_features",
    "redirect_tokenizers",
    "warn_degenerate_quantiles",
    "Data",
    "Splits",
    "DatasetConfig",
    "LossFn",
    "action_error",
    "noise_seed",
    "policy_loss",
    "processors",
]


def noise_seed(seed: int, batch_index: int) -> int:
    return seed * 1_000_003 + batch_index


@dataclass(frozen=True)
class Splits:
    """Episode indices of the three parts (each sorted; validation / test empty when not asked for)."""

    train: list[int]
    validation: list[int]
    test: list[int]


class Data:
    """A LeRobotDataset opened once, with the policy's action-chunk timestamps (features checked against
    the policy), and what every stage draws from it."""

    def __init__(self, policy: Loaded, cfg: DatasetConfig) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

        if not policy.takes_datasets:
            raise VlapruneError(
                "datasets feed lerobot policies and OpenVLA-OFT checkpoints with their action head; this "
                "model is neither"
            )
        if not cfg.given:
            raise VlapruneError(
                "no dataset given; pass --dataset.repo_id=ORG/NAME and/or --dataset.root=FOLDER"
            )
        if cfg.root and not (Path(cfg.root) / "meta" / "info.json").is_file():
            raise VlapruneError(f"--dataset.root {cfg.root} is not a LeRobotDataset (no meta/info.json)")
        repo_id = cfg.repo_id or f"local/{Path(cfg.root).name}"
        try:
            meta = LeRobotDatasetMetadata(repo_id, root=cfg.root)
        except Exception as e:
            raise VlapruneError(
                f"cannot open dataset {repo_id!r}: {type(e).__name__}: {str(e)[:200]}"
            ) from None
        fmt = policy.data_format  # the family's batch format (OFT's own: adapters.openvla.batch)
        fmt.check(policy.module, meta.features)
        deltas = fmt.delta_timestamps(policy.module, meta)
        self.cfg, self.policy, self.meta = cfg, policy, meta
        self.dataset = LeRobotDataset(repo_id, root=cfg.root, episodes=cfg.episodes, delta_timestamps=deltas)
        self._processors: tuple[Any, Any] | None = None

    @property
    def episodes(self) -> list[int]:
        """The episodes this dataset reads (`--dataset.episodes`, or all)."""
        return sorted(self.cfg.episodes) if self.cfg.episodes is not None else self._all_episodes()

    def _all_episodes(self) -> list[int]:
        return [int(e) for e in self.meta.episodes["episode_index"]]

    def split(self, holdout: float, flag: str = "--holdout") -> tuple[list[int], list[int] | None]:
        """(training episodes, test episodes | None): `splits(test=holdout)` without a validation part."""
        s = self.splits(test=holdout, test_flag=flag)
        return s.train, s.test or None

    def splits(
        self,
        test: float = 0.0,
        validation: float = 0.0,
        test_flag: str = "--holdout",
        validation_flag: str = "--validation",
    ) -> Splits:
        """Train / validation / test episodes, per task, in episode order: the last `test` fraction of each
        task's episodes is test, the `validation` fraction before it is validation, the rest is train (at
        least one episode per part asked for, and every task keeps one training episode; a task with a
        single episode trains on it). `--dataset.episodes` restricts all three to the episodes given.
        Raises when a part asked for ends up empty: numbers "held out" must never be training episodes."""
        for value, flag in ((test, test_flag), (validation, validation_flag)):
            if not 0 <= value < 1:
                raise VlapruneError(f"{flag}={value}: a fraction of each task's episodes in [0, 1)")
        if test + validation >= 1:
            raise VlapruneError(
                f"{test_flag} + {validation_flag} = {test + validation}: leave episodes to train on"
            )
        chosen = set(self.episodes)
        by_task: dict[str, list[int]] = {}
        for ep in self.meta.episodes:
            if int(ep["episode_index"]) not in chosen:
                continue
            task = ep["tasks"][0] if isinstance(ep["tasks"], list) and ep["tasks"] else str(ep["tasks"])
            by_task.setdefault(task, []).append(int(ep["episode_index"]))
        train, val, held = [], [], []
        for eps in by_task.values():
            n = len(eps)
            k_test = max(1, round(test * n)) if test > 0 and n > 1 else 0
            k_val = max(1, round(validation * n)) if validation > 0 and n - k_test > 1 else 0
            k_val = min(k_val, n - k_test - 1)
            train += eps[: n - k_test - k_val]
            val += eps[n - k_test - k_val : n - k_test]
            held += eps[n - k_test :]
        if test > 0 and not held:
            raise VlapruneError(
                f"too few episodes per task to hold any out for testing; add episodes or set {test_flag}=0"
            )
        if validation > 0 and not val:
            raise VlapruneError(
                f"too few episodes per task for a validation split; add episodes or set {validation_flag}=0"
            )
        return Splits(sorted(train), sorted(val), sorted(held))

    def identity(self) -> str:
        """The dataset's name in records (`trained_on`): its repo id, or local/FOLDER for a local one."""
        return self.meta.repo_id

    def check_held_out(self, record_trained_on: list[dict] | None, episodes: list[int], what: str) -> None:
        """Refuse to call `episodes` held out when the policy's record says it trained on any of them."""
        for entry in record_trained_on or []:
            if entry.get("dataset") != self.identity():
                continue
            seen = sorted(set(entry.get("episodes") or []) & set(episodes))
            if seen:
                raise VlapruneError(
                    f"{what} episodes {seen[:8]} of {self.identity()} are ones this checkpoint was trained "
                    "on (plan.json trained_on); hold out other episodes (e.g. the --holdout the recovery "
                    "used) or evaluate on another dataset"
                )

    def frames(self, episodes: list[int] | None = None) -> torch.utils.data.Dataset:
        """The frames of `episodes` (default: all), in dataset order: the same frames, in the same order, as a
        LeRobotDataset opened on just those episodes."""
        if episodes is None or sorted(episodes) == self.episodes:
            return self.dataset
        unknown = sorted(set(episodes) - set(self.episodes))
        if unknown:
            raise VlapruneError(
                f"episodes {unknown[:5]} are not in this dataset (it has {len(self.episodes)})"
            )
        bounds = self.meta.episodes
        rel = self.dataset.absolute_to_relative_idx
        rows = []
        for e in sorted(episodes):
            lo, hi = int(bounds["dataset_from_index"][e]), int(bounds["dataset_to_index"][e])
            rows += [rel[i] for i in range(lo, hi)] if rel is not None else list(range(lo, hi))
        return torch.utils.data.Subset(self.dataset, rows)

    @contextlib.contextmanager
    def augmented(self, transform: Callable | None) -> Iterator[Data]:
        """While active, every image read goes through `transform` (recovery's augmentation)."""
        before = self.dataset.image_transforms
        self.dataset.set_image_transforms(transform)
        try:
            yield self
        finally:
            self.dataset.set_image_transforms(before)

    @contextlib.contextmanager
    def processors_folder(self) -> Iterator[Path | None]:
        """A folder holding the policy's processors, for checkpoints to carry them: the policy's own when it
        has saved ones, else (lerobot policies) a temporary one with the pipelines normalized with this
        dataset's statistics, so that the checkpoint runs closed loop without the dataset."""
        saved = self.policy.folder
        if (saved and (saved / "policy_preprocessor.json").is_file()) or not self.policy.is_lerobot:
            yield saved
            return
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vlaprune-processors-") as tmp:
            for pipeline in self.processors():
                pipeline.save_pretrained(tmp)
            yield Path(tmp)

    def processors(self) -> tuple[Any, Any]:
        """(preprocessor, postprocessor) of the policy for this dataset (its family's `DataFormat.processors`:
        lerobot's, see `processors`), built once; for OpenVLA-OFT the preprocessor maps frames to OFT's batch
        format and there is no postprocessor."""
        if self._processors is None:
            self._processors = self.policy.data_format.processors(self.policy, self.meta)
        return self._processors

    def batches(
        self, n_batches: int, batch_size: int, seed: int = 0, episodes: list[int] | None = None
    ) -> list[dict]:
        """`n_batches` preprocessed batches of `batch_size` frames of `episodes`, the same for the same seed,
        on the policy's device."""
        if n_batches < 1 or batch_size < 1:
            raise VlapruneError(
                f"need at least one batch of at least one frame (got {n_batches} x {batch_size})"
            )
        frames = self.frames(episodes)
        if len(frames) < batch_size:
            raise VlapruneError(f"the dataset has {len(frames)} frames, fewer than --batch_size={batch_size}")
        loader = torch.utils.data.DataLoader(
            frames,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
        )
        pre = self.processors()[0]
        device = next(self.policy.module.parameters()).device
        out = []
        for batch in loader:
            batch = pre(batch)
            out.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
            if len(out) == n_batches:
                break
        return out


def policy_loss(policy: nn.Module, seed: int = 0) -> LossFn:
    """loss(i, batch): the policy's own training loss on batch i with noise/time fixed by (seed, i)."""
    device = next(policy.parameters()).device
    devices = [device] if device.type == "cuda" else []
    fam = family_of(policy)
    family_loss = fam.data.loss if fam is not None and fam.data is not None else lerobot_loss

    def loss(i: int, batch: dict) -> torch.Tensor:
        policy.eval()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(noise_seed(seed, i))
            value = family_loss(policy, dict(batch))
        if not torch.isfinite(value):
            raise VlapruneError(
                f"the loss is {value.item()} on calibration batch {i}; check the checkpoint and the "
                "dataset's normalization statistics (a constant feature gives zero std)"
            )
        return value

    return loss


def action_error(
    policy: nn.Module, batch: dict, i: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum |error|, sum error^2, steps) of batch i's predicted action chunk against the recorded one.

    Normalized action space; the sums are per action dimension, shape (A,), over the non-padding steps;
    the sampling noise is fixed by (seed, i).
    """
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(noise_seed(seed, i))
        fam = family_of(policy)  # OFT: its L1 head on its own batch format ("actions")
        predict = fam.data.predict if fam is not None and fam.data is not None else lerobot_predict
        pred, target = predict(policy, batch)  # (B, chunk, A)
    target = target[:, : pred.shape[1], : pred.shape[2]]
    pad = batch.get("action_is_pad", torch.zeros(target.shape[:2], dtype=torch.bool, device=target.device))
    diff = (pred - target)[~pad[:, : pred.shape[1]]]  # (valid steps, A)
    return diff.abs().sum(0), (diff**2).sum(0), diff.shape[0]
