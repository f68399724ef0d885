"""How lerobot policies meet LeRobotDataset frames: features, the action chunk they read, their processors
(the saved pipelines, else fresh ones with the dataset's statistics), their loss and action prediction, and
per-example loss weights for GateProbe. SmolVLA, pi0, pi0.5 and other lerobot policies share it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.family import DataFormat
from vlaprune.adapters.source import is_lerobot
from vlaprune.errors import VlapruneError


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


@contextlib.contextmanager
def redirect_tokenizers(mapping: dict[str, str]) -> Iterator[None]:
    """While active, `AutoTokenizer.from_pretrained(<hub id>)` loads the local folder `mapping[hub id]`
    (for processors that hard-code a hub tokenizer, e.g. pi0's PaliGemma one, on models built offline)."""
    if not mapping:
        yield
        return
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        return original(cls, str(mapping.get(name, name)), *args, **kwargs)

    AutoTokenizer.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        AutoTokenizer.from_pretrained = classmethod(original)


def processors(policy: Any, stats: dict | None = None) -> tuple[Any, Any]:
    """(preprocessor, postprocessor) of a policy handle (module, folder, config, tokenizers): the pipelines
    saved with the checkpoint if it has them, else fresh ones normalized with the dataset statistics
    `stats`."""
    from lerobot.policies.factory import make_pre_post_processors

    saved = policy.folder is not None and (policy.folder / "policy_preprocessor.json").is_file()
    if not saved and stats is None:
        raise VlapruneError(
            "the policy's normalization statistics are needed: use a checkpoint saved with its processors "
            "(policy_preprocessor.json) or pass --dataset.repo_id / --dataset.root"
        )
    with redirect_tokenizers(policy.tokenizers):
        if saved:  # on the policy's device, as lerobot-train / lerobot-eval override it
            device = str(next(policy.module.parameters()).device)
            overrides = {"device_processor": {"device": device}}
            return make_pre_post_processors(
                policy.config, pretrained_path=str(policy.folder), preprocessor_overrides=overrides
            )
        warn_degenerate_quantiles(policy.config, stats)
        return make_pre_post_processors(policy.config, dataset_stats=stats)


def warn_degenerate_quantiles(config: Any, stats: dict) -> list[str]:
    """Features the policy normalizes by quantiles (pi0.5's default: (x - q01) / (q99 - q01)) whose q01 and
    q99 coincide in some dimension: lerobot then divides by ~1e-8 there and the loss reaches ~1e15 (e.g. a
    gripper action that is constant in 98% of the frames). Logs one warning per such feature; returns them."""
    import logging

    import numpy as np

    features = {**config.input_features, **config.output_features}
    out = []
    for key, feat in features.items():
        mode = getattr(config.normalization_mapping.get(feat.type.value), "value", "")  # e.g. "QUANTILES"
        if not mode.startswith("QUANTILE") or key not in stats:
            continue
        lo, hi = ("q10", "q90") if mode == "QUANTILE10" else ("q01", "q99")
        if lo not in stats[key] or hi not in stats[key]:
            continue
        flat = np.flatnonzero(np.abs(np.asarray(stats[key][hi]) - np.asarray(stats[key][lo])) < 1e-6)
        if flat.size:
            out.append(key)
            logging.getLogger("vlaprune").warning(
                f"{key}: {lo} == {hi} in dimension(s) {flat.tolist()}; the policy's quantile normalization "
                "divides by ~0 there (losses ~1e15): use mean/std normalization for it "
                "(config.normalization_mapping) or a dataset where that dimension varies"
            )
    return out


def delta_timestamps(policy: nn.Module, meta: Any) -> dict:
    from lerobot.datasets.factory import resolve_delta_timestamps

    return resolve_delta_timestamps(policy.config, meta)


def dataset_processors(policy: Any, meta: Any) -> tuple[Any, Any]:
    return processors(policy, meta.stats if meta is not None else None)


def loss(policy: nn.Module, batch: dict) -> torch.Tensor:
    return policy.forward(batch)[0]


def predict(policy: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, recorded) action chunks (B, chunk, A)."""
    policy.reset()
    return policy.predict_action_chunk(dict(batch)), batch["action"]


def mean_weights(batch: dict) -> torch.Tensor:
    """pi0 / pi0.5: the loss is a mean over (batch, chunk, action dims), padded steps included: w[b] = 1/B."""
    n = batch["action"].shape[0]
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def valid_step_weights(batch: dict) -> torch.Tensor:
    """SmolVLA: padded steps are masked, loss = sum / (valid steps V * A): w[b] = n_b / V (1/B unpadded)."""
    pad = batch.get("action_is_pad")
    if pad is None:
        return mean_weights(batch)
    valid = (~pad.bool()).sum(1).double().cpu()  # n_b, valid steps per example
    return valid / valid.sum().clamp_min(1)


DATA = DataFormat(
    takes=is_lerobot,
    check=check_features,
    delta_timestamps=delta_timestamps,
    processors=dataset_processors,
    loss=loss,
    predict=predict,
)
