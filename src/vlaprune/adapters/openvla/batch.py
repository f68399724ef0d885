"""LeRobotDataset frames -> OpenVLA-OFT's batch format, the one its RLDS pipeline and collator produce:

    input_ids      (B, T)  <s> + "In: What action should the robot take to {task}?\\nOut: " + chunk * A action
                           tokens + </s>, right-padded with the pad id
    attention_mask (B, T)  False on padding
    labels         (B, T)  -100 on <s>, the prompt and padding; the action token ids and </s> elsewhere
    pixel_values   (B, 6 * cameras, S, S)  per camera the image for each tower (DINOv2, SigLIP), resized to
                           the tower's size and normalized with its mean / std (preprocessor_config.json)
    actions        (B, chunk, A)  normalized to [-1, 1] with the checkpoint's q01 / q99 (OFT's BOUNDS_Q99;
                           dimensions whose `mask` is false, the gripper, are left as they are)
    proprio        (B, P)  the state, normalized the same way (when the policy has a proprio projector)

Plain OpenVLA (no OFT head, `tokens.py`) takes the same batch with a chunk of one action and only the first
camera (OpenVLA's single third-person image); its labels are what its loss supervises.
Action tokens are OFT's ActionTokenizer's: 256 uniform bins on [-1, 1], token id = tokenizer.vocab_size -
bin (1-based); OFT zeroes their input embeddings, so only their positions matter for the L1 loss.
Statistics: the checkpoint's own (config `norm_stats` / dataset_statistics.json; the dataset key that the
repo id names, or the only one), else the dataset's (q01 / q99 when it has them, else min / max).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaprune.adapters.openvla.head import IGNORE_INDEX
from vlaprune.adapters.openvla.policy import OpenVLAPolicy
from vlaprune.errors import VlapruneError

PROMPT = "In: What action should the robot take to {}?\nOut: "  # OFT's PurePromptBuilder (trailing space)
DEFAULT_MEANS = ([0.485, 0.456, 0.406], [0.5, 0.5, 0.5])  # DINOv2 (ImageNet), SigLIP
DEFAULT_STDS = ([0.229, 0.224, 0.225], [0.5, 0.5, 0.5])


def cameras(features: dict[str, Any]) -> list[str]:
    """The dataset's camera keys, in its feature order (OFT: the third-person camera first, then wrist)."""
    return [
        k
        for k, f in features.items()
        if k.startswith("observation.images.") and f["dtype"] in ("image", "video")
    ]


def check_features(policy: OpenVLAPolicy, features: dict[str, Any]) -> None:
    """The dataset must have a camera, the action of the head's size and, with a proprio projector, a state
    of its size."""
    if not cameras(features):
        raise VlapruneError(
            "the dataset has no camera (observation.images.*) to feed OpenVLA's vision towers"
        )
    want = [("action", policy.action_dim if policy.action_head is not None else None)]
    if policy.proprio_projector is not None:
        want.append(("observation.state", policy.proprio_projector.proprio_dim))
    for key, size in want:
        if key not in features:
            raise VlapruneError(f"the dataset has no feature {key!r} that this OpenVLA-OFT policy needs")
        if size is not None and tuple(features[key]["shape"]) != (size,):
            raise VlapruneError(
                f"feature {key!r} has shape {tuple(features[key]['shape'])} in the dataset but the policy's "
                f"{'head' if key == 'action' else 'proprio projector'} takes ({size},); the dataset does not "
                "match this checkpoint"
            )


def delta_timestamps(policy: OpenVLAPolicy, fps: float) -> dict[str, list[float]]:
    """The action chunk each frame needs: this step and the next chunk - 1."""
    return {"action": [i / fps for i in range(policy.chunk)]}


def pick_stats(norm_stats: dict | None, repo_id: str, dataset_stats: dict) -> dict[str, dict]:
    """{"action": {...}, "proprio": {...}} with q01 / q99 (and mask) each; see the module docstring."""
    if norm_stats:
        keys = [k for k in norm_stats if k.lower() in repo_id.lower().replace("-", "_")] or list(norm_stats)
        if len(keys) > 1:
            raise VlapruneError(
                f"the checkpoint holds statistics of {len(keys)} datasets ({', '.join(keys)}); use a dataset "
                "whose repo id names one of them"
            )
        return norm_stats[keys[0]]

    def q(key: str) -> dict[str, Any]:
        s = dataset_stats.get(key) or {}
        lo, hi = s.get("q01", s.get("min")), s.get("q99", s.get("max"))
        if lo is None or hi is None:
            raise VlapruneError(f"neither the checkpoint nor the dataset has statistics for {key!r}")
        return {"q01": np.asarray(lo).tolist(), "q99": np.asarray(hi).tolist()}

    return {"action": q("action"), "proprio": q("observation.state")}


def normalize(x: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
    """OFT's BOUNDS_Q99: 2 (x - q01) / (q99 - q01) - 1, clipped to [-1, 1], where `mask` (default all)."""
    lo = torch.tensor(stats["q01"], dtype=torch.float32, device=x.device)
    hi = torch.tensor(stats["q99"], dtype=torch.float32, device=x.device)
    mask = torch.tensor(stats.get("mask", [True] * len(stats["q01"])), device=x.device)
    y = (2 * (x.float() - lo) / (hi - lo + 1e-8) - 1).clamp(-1, 1)
    return torch.where(mask, y, x.float())


def action_tokens(actions: torch.Tensor, vocab_size: int, bins: int = 256) -> torch.Tensor:
    """(B, chunk, A) in [-1, 1] -> (B, chunk * A) token ids, OFT's ActionTokenizer."""
    edges = np.linspace(-1, 1, bins)
    idx = np.digitize(actions.detach().cpu().float().clamp(-1, 1).numpy(), edges)
    return torch.as_tensor(vocab_size - idx, dtype=torch.long).reshape(actions.shape[0], -1)


def image_settings(folder: Path | None, policy: OpenVLAPolicy) -> list[tuple[int, list, list]]:
    """Per tower (size, mean, std), from OFT's preprocessor_config.json, else the config's image sizes."""
    f = folder / "preprocessor_config.json" if folder else None
    if f is not None and f.is_file():
        cfg = json.loads(f.read_text())
        if "input_sizes" in cfg:
            return [
                (s[-1], m, d) for s, m, d in zip(cfg["input_sizes"], cfg["means"], cfg["stds"], strict=True)
            ]
    sizes = policy.vla.config.image_sizes
    return [(s, DEFAULT_MEANS[i], DEFAULT_STDS[i]) for i, s in enumerate(sizes)]


def pixels(images: list[torch.Tensor], towers: list[tuple[int, list, list]]) -> torch.Tensor:
    """Camera images (B, 3, H, W) in [0, 1] -> (B, len(towers) * 3 * cameras, S, S)."""
    out = []
    for img in images:
        for size, mean, std in towers:
            x = torch.nn.functional.interpolate(
                img.float(), size=(size, size), mode="bicubic", antialias=True
            )
            m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
            s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
            out.append((x.clamp(0, 1) - m) / s)
    return torch.cat(out, dim=1)


def preprocessor(policy: OpenVLAPolicy, folder: Path | None, meta: Any) -> Callable[[dict], dict]:
    """A function mapping a collated LeRobotDataset batch to OFT's batch (see the module docstring)."""
    from transformers import AutoTokenizer

    if folder is None or not any(folder.glob("tokenizer*")):
        raise VlapruneError(
            f"{folder or 'this model'} has no tokenizer files; OFT's prompts need the checkpoint's tokenizer"
        )
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)  # the policy loaded with it
    stats = pick_stats(getattr(policy.vla.config, "norm_stats", None), meta.repo_id, meta.stats)
    towers = image_settings(folder, policy)
    cams = cameras(meta.features)[: None if policy.action_head is not None else 1]  # OpenVLA: 1st only
    bins = getattr(policy.vla.config, "n_action_bins", 256)
    if policy.action_head is None:  # plain OpenVLA decodes with the config's vocabulary: both must agree
        from vlaprune.adapters.openvla.tokens import decode_vocab

        if decode_vocab(policy.vla.config) != tok.vocab_size:
            raise VlapruneError(
                f"the tokenizer has {tok.vocab_size} ids but the config decodes action tokens against "
                f"text_config.vocab_size - pad_to_multiple_of = {decode_vocab(policy.vla.config)}; the "
                "tokenizer files do not belong to this checkpoint"
            )

    def prepare(batch: dict) -> dict:
        actions = normalize(batch["action"], stats["action"])  # (B, chunk, A)
        acts = action_tokens(actions, tok.vocab_size, bins)
        tasks = batch["task"] if isinstance(batch["task"], list) else [batch["task"]] * actions.shape[0]
        rows, labels = [], []
        for task, act in zip(tasks, acts.tolist(), strict=True):
            prompt = [tok.bos_token_id] + tok(
                PROMPT.format(task.lower()),
                add_special_tokens=False,  # OFT and OpenVLA: lowercased only
            ).input_ids
            rows.append(prompt + act + [tok.eos_token_id])
            labels.append([IGNORE_INDEX] * len(prompt) + act + [tok.eos_token_id])
        n = max(map(len, rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = {
            "input_ids": torch.tensor([r + [pad] * (n - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[True] * len(r) + [False] * (n - len(r)) for r in rows]),
            "labels": torch.tensor([r + [IGNORE_INDEX] * (n - len(r)) for r in labels]),
            "pixel_values": pixels([batch[c] for c in cams], towers),
            "actions": actions,
        }
        if policy.proprio_projector is not None:
            out["proprio"] = normalize(batch["observation.state"], stats["proprio"])
        device = next(policy.parameters()).device
        return {k: v.to(device) for k, v in out.items()}

    return prepare
