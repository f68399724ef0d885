"""Plain OpenVLA: the LLM's own LM head predicts the action as discretized tokens (no OFT head), as the
original OpenVLA (github openvla/openvla: prismatic/vla/action_tokenizer.py, datasets.py' RLDSBatchTransform,
util/data_utils.py' PaddedCollatorForActionPrediction, and the remote code's predict_action) trains and
decodes it. Written from that code, not copied.

Action tokens (OpenVLA's ActionTokenizer): each of the A action values, normalized to [-1, 1] with the
checkpoint's q01 / q99 (BOUNDS_Q99, where `mask`), clipped, is binned by np.digitize against the 256 edges
np.linspace(-1, 1, 256) (bin 1..256) and written as token id `tokenizer.vocab_size - bin`: the last 256 ids of
the vocabulary. Decoding reverses it: bin = vocab_size - token, index = clip(bin - 1, 0, 254) into the 255
bin centers (midpoints of the edges); predict_action takes vocab_size as text_config.vocab_size -
pad_to_multiple_of (32064 - 64 = 32000 for Llama-2, the tokenizer's size), and so does `normalized_actions`.

Batch (`batch.preprocessor`, one camera, a chunk of one action):
    input_ids  <s> "In: What action should the robot take to {task}?\\nOut: " + A action tokens + </s> (+ pad)
    labels     -100 on <s>, the prompt and padding; the A action token ids and </s> elsewhere
Loss (`token_loss`): OpenVLA's training loss, the LLM's next-token cross-entropy with the patches inserted
after <s> (labels -100 there), so exactly A + 1 positions per example are supervised: the A action tokens and
the stop token </s> (RLDSBatchTransform's predict_stop_token=True). Mean over the supervised positions of the
batch; every example has A + 1, so example b weighs 1/B.

Decoding (`greedy_tokens`, `predict_actions`): the prompt (<s> + "...?\\nOut:" + the empty token "▁", 29871,
which predict_action appends when missing) through the VLA with the LLM's cache, then A tokens by argmax over
the whole vocabulary (generate with do_sample=False), one cached LLM step each. Unlike `generate`, it always
decodes A tokens (generate would stop early on </s>, which a trained OpenVLA does not emit first).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlaprune.adapters.openvla.head import IGNORE_INDEX
from vlaprune.adapters.openvla.policy import OpenVLAPolicy, example_batch, is_oft_model
from vlaprune.errors import VlapruneError

N_BINS = 256  # OpenVLA's default n_action_bins


def is_token_policy(policy: nn.Module) -> bool:
    """Is this a plain OpenVLA (model_type "openvla", no OFT head, not OFT's code)? Its LM head predicts the
    action tokens. A bare Prismatic VLM (model_type "prismatic") is not."""
    return (
        isinstance(policy, OpenVLAPolicy)
        and policy.action_head is None
        and not is_oft_model(policy.vla)
        and getattr(policy.vla.config, "model_type", None) == "openvla"
    )


def check_folder(folder: Path, cfg: dict[str, Any], has_head: bool) -> None:
    """An OpenVLA folder without an OFT head must bring the statistics its actions are decoded with."""
    if cfg.get("model_type") != "openvla" or has_head:
        return
    if not cfg.get("norm_stats") and not (folder / "dataset_statistics.json").is_file():
        raise VlapruneError(
            f"{folder} is an OpenVLA checkpoint with neither an OFT action head (action_head--<step>_"
            "checkpoint.pt) nor action statistics (norm_stats in config.json, dataset_statistics.json), so "
            "its action tokens cannot be un-normalized; copy the checkpoint's dataset_statistics.json into it"
        )


def statistics(policy: OpenVLAPolicy) -> dict[str, Any]:
    """The statistics OpenVLA's get_vla un-normalizes with: the folder's dataset_statistics.json when there is
    one, else the config's norm_stats."""
    folder = getattr(policy, "folder", None)
    f = Path(folder) / "dataset_statistics.json" if folder is not None else None
    if f is not None and f.is_file():
        return json.loads(f.read_text())
    stats = getattr(policy.vla.config, "norm_stats", None)
    if not stats:
        raise VlapruneError(
            "this OpenVLA has no norm_stats nor dataset_statistics.json to decode actions with"
        )
    return stats


def action_dims(policy: OpenVLAPolicy) -> set[int]:
    """The action sizes its statistics name (one per dataset key; usually {7})."""
    return {len(s["action"]["q01"]) for s in statistics(policy).values() if "action" in s}


def decode_vocab(config: Any) -> int:
    """The vocabulary size predict_action decodes against: text vocab - pad_to_multiple_of."""
    return config.text_config.vocab_size - getattr(config, "pad_to_multiple_of", 0)


def bin_centers(n_bins: int = N_BINS) -> np.ndarray:
    """(n_bins - 1,) midpoints of np.linspace(-1, 1, n_bins)."""
    edges = np.linspace(-1, 1, n_bins)
    return (edges[:-1] + edges[1:]) / 2.0


def normalized_actions(tokens: np.ndarray, vocab_size: int, n_bins: int = N_BINS) -> np.ndarray:
    """Token ids (..., A) -> normalized actions in [-1, 1] (..., A): the bin center of vocab_size - token
    (index clipped to the 255 centers, also for ids outside the action range, as OpenVLA clips)."""
    centers = bin_centers(n_bins)
    idx = np.clip(vocab_size - np.asarray(tokens) - 1, 0, centers.shape[0] - 1)
    return centers[idx]


def unnormalize(actions: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """OpenVLA's predict_action: 0.5 (a + 1) (q99 - q01) + q01 where `mask`, a elsewhere (no epsilon)."""
    lo, hi = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(lo, dtype=bool)))
    return np.where(mask, 0.5 * (actions + 1) * (hi - lo) + lo, actions)


def _dtype(vla: nn.Module) -> torch.dtype:
    return next(vla.parameters()).dtype


def token_loss(policy: OpenVLAPolicy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """OpenVLA's loss on a batch (see the module docstring): (cross-entropy, {"ce", "token_accuracy"})."""
    labels = batch["labels"]  # (B, T)
    out = policy.vla(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"].to(_dtype(policy.vla)),
        use_cache=False,
    )
    logits = out.logits  # (B, 1 + P + T - 1, V): <s>, patches, the rest of the text
    b, patches = labels.shape[0], logits.shape[1] - labels.shape[1]
    ignore = labels.new_full((b, patches), IGNORE_INDEX)
    target = torch.cat([labels[:, :1], ignore, labels[:, 1:]], 1)[:, 1:]  # next token of each position
    keep = target != IGNORE_INDEX
    counts = keep.sum(1)
    if bool((counts != counts[0]).any()) or int(counts[0]) < 2:
        raise VlapruneError(
            f"batch rows label {counts.tolist()} tokens; OpenVLA's batches label A action tokens + </s> in "
            "every row"
        )
    picked = logits[:, :-1][keep].float()  # (B * (A + 1), V)
    loss = nn.functional.cross_entropy(picked, target[keep])
    acc = (picked.argmax(-1) == target[keep]).float().mean()
    return loss, {"ce": loss.detach().item(), "token_accuracy": acc.item()}


@torch.no_grad()
def greedy_tokens(
    vla: nn.Module, input_ids: torch.Tensor, pixel_values: torch.Tensor, n: int
) -> torch.Tensor:
    """(B, T) prompt ids of one length (no padding) + (B, C, S, S) pixels -> (B, n) greedily decoded ids."""
    ones = torch.ones_like(input_ids, dtype=torch.bool)
    out = vla(
        input_ids=input_ids, attention_mask=ones, pixel_values=pixel_values.to(_dtype(vla)), use_cache=True
    )
    past, tok = out.past_key_values, out.logits[:, -1].argmax(-1)
    tokens = [tok]
    for _ in range(n - 1):  # one cached LLM step per token, as generate runs them
        step = vla.language_model(input_ids=tok[:, None], past_key_values=past, use_cache=True)
        past, tok = step.past_key_values, step.logits[:, -1].argmax(-1)
        tokens.append(tok)
    return torch.stack(tokens, 1)


@torch.no_grad()
def predict_actions(policy: OpenVLAPolicy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Normalized actions (B, 1, A) decoded from each row's prompt (the ids before its first label), rows of
    one prompt length decoded together; A = the batch's action size."""
    labels, ids = batch["labels"], batch["input_ids"]
    a = batch["actions"].shape[-1]
    starts = (labels != IGNORE_INDEX).int().argmax(1).tolist()  # first supervised position = prompt length
    out = torch.empty(ids.shape[0], 1, a)
    vocab, bins = decode_vocab(policy.vla.config), getattr(policy.vla.config, "n_action_bins", N_BINS)
    for n in sorted(set(starts)):
        rows = [i for i, s in enumerate(starts) if s == n]
        toks = greedy_tokens(policy.vla, ids[rows, :n], batch["pixel_values"][rows], a)
        out[rows, 0] = torch.as_tensor(normalized_actions(toks.cpu().numpy(), vocab, bins), dtype=out.dtype)
    return out.to(batch["actions"].device)


def example_pass(policy: OpenVLAPolicy, training: bool) -> Callable[[], Any]:
    """One inference (prompt + 7 greedy tokens) or one training loss on the adapter's example batch."""
    full = example_batch(policy)  # <s> + 8 prompt tokens + 7 action tokens (chunk 1) + </s>
    n = 1 + 8 + 7
    eos = torch.full_like(full["input_ids"][:, :1], policy.vla.config.text_config.eos_token_id or 2)
    ids = torch.cat([full["input_ids"][:, :n], eos], 1)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "labels": torch.cat([full["labels"][:, :n], eos], 1),
        "pixel_values": full["pixel_values"],
    }

    def run() -> Any:
        if training:
            return token_loss(policy, batch)
        return greedy_tokens(policy.vla, batch["input_ids"][:, : 1 + 8], batch["pixel_values"], 7)

    return run
