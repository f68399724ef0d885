"""OpenVLA-OFT in closed loop on LIBERO, as OFT's own evaluation runs it (its experiments/robot/libero/
run_libero_eval.py with openvla_utils.py and robot_utils.py, github moojink/openvla-oft; written from them,
not copied):

    env step          the LIBERO env of `vlaprune.evaluate.envs.libero` (256 px cameras, both rotated by 180
                      degrees; its reset already steps the 10 wait steps with OFT's dummy action
                      [0, 0, 0, 0, 0, 0, -1]); episodes capped at OFT's per-suite steps (OFT_MAX_STEPS)
    images            agentview, then wrist: JPEG round trip + Lanczos-3 antialiased resize to 224 (`resize`),
                      center crop of 0.9 area resized back to 224 (`center_crop`, when the checkpoint trained
                      with crop augmentation: OFT's `center_crop=True`), per tower resized and normalized as
                      the checkpoint's preprocessor_config.json says (`tower_pixels`)
    prompt            <s> "In: What action should the robot take to {task.lower()}?\\nOut:" + the empty token
                      that follows the colon at training time (`prompt_ids`)
    state             eef pos (3) + axis-angle (3) + gripper qpos (2), normalized with the statistics of
                      the unnorm key (`normalize_proprio`: q01 / q99, mask, clipped)
    actions           a chunk of 8 from one forward (the L1 head), run open loop; un-normalized with q01 / q99
                      where `mask` (`unnormalize`); gripper [0, 1] -> sign(2g - 1), then inverted (`gripper`)

The unnorm key is OFT's: the suite name, or the suite name + "_no_noops" (`unnorm_key`). Statistics come from
the checkpoint's dataset_statistics.json, as OFT's get_vla loads them.

Resampling without TensorFlow: OFT resizes with `tf.image.encode_jpeg` + `decode_image` (whose default is
libjpeg's fast integer DCT) + `tf.image.resize(..., "lanczos3", antialias=True)`, and center-crops with
`tf.image.crop_and_resize` (bilinear). vlaprune encodes with Pillow (TF's bytes: quality 95, 4:2:0), decodes
with simplejpeg's fast DCT and resizes / crops in numpy by TF's sampling rules. Measured against
TensorFlow 2.21 on LIBERO frames (docs/openvla.md, "OpenVLA-OFT on LIBERO"): the JPEG round trip is
bit-identical, the resize differs by 1 level in 30 of 1.2 M values (float summation order), resize + crop
in 46.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from vlaprune.adapters.openvla.policy import OpenVLAPolicy
from vlaprune.errors import VlapruneError

OFT_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
IMAGE_SIZE = 224  # OFT's OPENVLA_IMAGE_SIZE: what its LIBERO data were resized to
CROP_AREA = 0.9
JPEG_QUALITY = 95  # tf.image.encode_jpeg's default
CAMERAS = (
    "observation.images.image",
    "observation.images.image2",
)  # agentview, wrist (lerobot's LIBERO names)
STATE = "observation.state"
EMPTY_TOKEN = "▁"  # Llama-2's id 29871, which OFT's predict_action appends after "Out:"


def resize(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 as OFT's resize_image_for_policy (the RLDS builder's
    resizing): JPEG encode (quality 95, 4:2:0) + decode with TensorFlow's default fast integer DCT, then
    TF's antialiased Lanczos-3 resize in float32, rounded and clipped."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2)
    try:
        import simplejpeg
    except ImportError:
        raise VlapruneError(
            "OpenVLA-OFT's LIBERO evaluation decodes JPEG as TensorFlow does, with simplejpeg: pip install "
            "simplejpeg (or the libero extra)"
        ) from None
    x = simplejpeg.decode_jpeg(buf.getvalue(), colorspace="RGB", fastdct=True, fastupsample=False)
    x = x.astype(np.float32)
    x = np.einsum("oh,hwc->owc", lanczos3_weights(x.shape[0], size), x)  # rows, then columns
    x = np.einsum("pw,owc->opc", lanczos3_weights(x.shape[1], size), x)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@functools.cache
def lanczos3_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of TF's scale_and_translate with the Lanczos-3 kernel and antialiasing:
    output pixel i samples the input at s = (i + 0.5) n_in / n_out; input pixel j weighs
    L((j + 0.5 - s) / k), k = max(n_in / n_out, 1), L(x) = 3 sin(pi x) sin(pi x / 3) / (pi x)^2 for
    1e-3 < |x| <= 3 (1 below, 0 beyond); each row normalized to sum 1."""
    inv = n_in / n_out
    sample = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(inv)
    x = np.abs(np.arange(n_in, dtype=np.float32)[None, :] + 0.5 - sample[:, None]) / np.float32(max(inv, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(x > 1e-3, 3 * np.sin(np.pi * x) * np.sin(np.pi * x / 3) / (np.pi**2 * x**2), 1.0)
    k = np.where(x > 3, 0.0, k).astype(np.float32)
    return k / k.sum(1, keepdims=True)


def center_crop(img: np.ndarray, area: float = CROP_AREA) -> np.ndarray:
    """(S, S, 3) uint8 -> (S, S, 3) uint8: the central crop of `area` of the image (side sqrt(area)) resized
    back to S, bilinear, as tf.image.crop_and_resize samples it (a box [y1, x1, y2, x2] in [0, 1], output
    pixel i at y1 (S - 1) + i (y2 - y1) (S - 1) / (S - 1)); then TF's float -> uint8 rule (x 255.5,
    truncated)."""
    s = img.shape[0]
    side = np.sqrt(np.float32(area))
    lo = (1 - side) / 2
    pos = lo * (s - 1) + np.arange(s, dtype=np.float32) * (side * (s - 1) / (s - 1))  # sample rows = cols
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, s - 1)
    w = (pos - i0).astype(np.float32)
    x = img.astype(np.float32) / 255
    rows = x[i0] * (1 - w)[:, None, None] + x[i1] * w[:, None, None]  # (S, S, 3)
    out = rows[:, i0] * (1 - w)[None, :, None] + rows[:, i1] * w[None, :, None]
    return (np.clip(out, 0, 1) * 255.5).astype(np.uint8)


def tower_pixels(img: np.ndarray, towers: list[tuple[int, list, list]]) -> torch.Tensor:
    """(S, S, 3) uint8 -> (3 * towers, size, size): per tower the PIL image resized to the tower's input
    (bicubic, a no-op at 224 for OFT's towers), scaled to [0, 1] and normalized (PrismaticImageProcessor)."""
    from PIL import Image

    out = []
    for size, mean, std in towers:
        pil = Image.fromarray(img)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(pil, np.float32) / 255).permute(2, 0, 1)
        out.append((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))
    return torch.cat(out)


def normalize_proprio(state: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """OFT's normalize_proprio (BOUNDS_Q99): 2 (x - q01) / (q99 - q01 + 1e-8) - 1 where `mask`, x elsewhere,
    all clipped to [-1, 1]."""
    lo, hi = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(lo, dtype=bool)))
    return np.clip(np.where(mask, 2 * (state - lo) / (hi - lo + 1e-8) - 1, state), -1.0, 1.0)


def unnormalize(actions: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """OFT's _unnormalize_actions (BOUNDS_Q99): 0.5 (a + 1) (q99 - q01 + 1e-8) + q01 where `mask`, a
    elsewhere."""
    lo, hi = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(lo, dtype=bool)))
    return np.where(mask, 0.5 * (actions + 1) * (hi - lo + 1e-8) + lo, actions)


def gripper(actions: np.ndarray) -> np.ndarray:
    """OFT's process_action for the openvla family: the gripper [0, 1] -> [-1, 1], binarized by its sign,
    then inverted (its data loader made 0 = close, 1 = open; LIBERO takes -1 = open, +1 = close)."""
    out = actions.copy()
    out[..., -1] = -np.sign(2 * out[..., -1] - 1)
    return out


def unnorm_key(norm_stats: dict[str, Any], suite: str) -> str:
    """OFT's check_unnorm_key: the suite name, else the suite name + "_no_noops"."""
    for key in (suite, f"{suite}_no_noops"):
        if key in norm_stats:
            return key
    raise VlapruneError(
        f"the checkpoint's dataset statistics have no unnorm key {suite!r} (nor {suite}_no_noops) for LIBERO "
        f"task suite {suite}; they have: {', '.join(norm_stats) or 'none'}"
    )


def prompt_ids(tok: Any, task: str) -> list[int]:
    """<s> + OFT's prompt for `task` + the empty token after the colon, as its predict_action appends it
    (Llama-2: "▁", id 29871; another tokenizer: the token the trailing space of the training prompt
    "...Out: " becomes, if it becomes one)."""
    text = f"In: What action should the robot take to {task.lower()}?\nOut:"
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids
    empty = tok.convert_tokens_to_ids(EMPTY_TOKEN)
    if empty is None or empty == tok.unk_token_id:  # not Llama's: what the training prompt's space became
        spaced = tok(text + " ", add_special_tokens=False).input_ids
        empty = spaced[-1] if len(spaced) == len(ids) and spaced[:-1] == ids[1:] else None
    if empty is not None and ids[-1] != empty:
        ids.append(empty)
    return ids


@functools.cache
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # the policy loaded with it


def statistics(policy: OpenVLAPolicy) -> dict[str, Any]:
    """The checkpoint's dataset statistics (dataset_statistics.json, as OFT's get_vla reads them)."""
    folder = getattr(policy, "folder", None)
    if folder is None:  # built in Python: the config's
        return getattr(policy.vla.config, "norm_stats", None) or {}
    f = Path(folder) / "dataset_statistics.json"
    if not f.is_file():
        raise VlapruneError(
            f"{folder} has no dataset_statistics.json, which OFT's evaluation un-normalizes actions with; "
            "copy the file OFT saved beside the checkpoint into the folder"
        )
    return json.loads(f.read_text())


class OFTLibero(nn.Module):
    """An OFT policy with the interface closed-loop rollouts drive (`config.input_features`, `reset`,
    `select_action` on the raw env batch), running OFT's LIBERO pipeline (see the module docstring).

    suite: the LIBERO suite (picks the unnorm key); crop: center-crop (OFT's center_crop)."""

    def __init__(self, policy: OpenVLAPolicy, suite: str, crop: bool = True) -> None:
        super().__init__()
        from lerobot.configs.types import FeatureType, PolicyFeature

        from vlaprune.adapters.openvla.batch import image_settings

        if policy.action_head is None:
            raise VlapruneError("closed-loop OFT needs its action head (action_head--<step>_checkpoint.pt)")
        folder = getattr(policy, "folder", None)
        if folder is None or not any(Path(folder).glob("tokenizer*")):
            raise VlapruneError(
                f"{folder or 'this OFT policy'} has no tokenizer files; OFT's prompt needs them"
            )
        self.policy, self.suite, self.crop = policy, suite, crop
        stats = statistics(policy)
        self.stats = stats[unnorm_key(stats, suite)]
        self.towers = image_settings(Path(folder), policy)
        self.tok = _tokenizer(str(folder))
        image = PolicyFeature(FeatureType.VISUAL, (3, IMAGE_SIZE, IMAGE_SIZE))
        features = {c: image for c in CAMERAS}
        if policy.proprio_projector is not None:
            features[STATE] = PolicyFeature(FeatureType.STATE, (policy.proprio_projector.proprio_dim,))
        self.config = SimpleNamespace(input_features=features)
        self.env_defaults = {"max_steps": OFT_MAX_STEPS[suite]} if suite in OFT_MAX_STEPS else {}
        # the diffusion head's sampling noise, seeded per episode by closed loop (evaluate.closed_loop)
        self.noise_module = "policy.action_head" if hasattr(policy.action_head, "sample_noise") else None
        self.queue: list[np.ndarray] = []  # the rest of the current chunk: (B, 7) per step

    def reset(self) -> None:
        self.queue = []

    def observation(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The raw env batch (cameras (B, 3, H, W) in [0, 1], state (B, 8), task) -> OFT's model inputs."""
        rows = []
        for b in range(len(batch["task"])):
            imgs = []
            for cam in CAMERAS:
                img = (batch[cam][b].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # (H, W, 3)
                img = resize(img)
                imgs.append(tower_pixels(center_crop(img) if self.crop else img, self.towers))
            rows.append(torch.cat(imgs))
        ids = torch.tensor([prompt_ids(self.tok, t) for t in batch["task"]])  # one task per rollout batch
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
        out["pixel_values"] = torch.stack(rows)
        if STATE in self.config.input_features:
            state = np.asarray(batch[STATE], np.float64)
            out["proprio"] = torch.as_tensor(
                normalize_proprio(state, self.stats["proprio"]), dtype=torch.float32
            )
        return out

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any]) -> np.ndarray:
        """(B, chunk, 7) environment actions for the raw env batch."""
        from vlaprune.adapters.openvla.policy import predict_actions

        obs = self.observation(batch)
        device = next(self.policy.parameters()).device
        obs = {k: v.to(device) for k, v in obs.items()}
        norm = predict_actions(self.policy, action_batch(self.policy, obs)).float().cpu().numpy()
        return gripper(unnormalize(norm, self.stats["action"]))

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        if not self.queue:
            chunk = self.predict_chunk(batch)
            self.queue = [chunk[:, i] for i in range(chunk.shape[1])]
        return torch.as_tensor(self.queue.pop(0), dtype=torch.float32)


def action_batch(policy: OpenVLAPolicy, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OFT's inference input: the prompt + chunk * A placeholder action tokens + the stop token, with labels
    marking the action slots (what its predict_action builds before the forward)."""
    from vlaprune.adapters.openvla.head import IGNORE_INDEX

    ids = obs["input_ids"]
    text = policy.vla.config.text_config
    n_act = policy.chunk * policy.action_dim
    fill = torch.full((ids.shape[0], n_act), text.vocab_size - 2, dtype=ids.dtype, device=ids.device)
    stop = torch.full(
        (ids.shape[0], 1), text.eos_token_id, dtype=ids.dtype, device=ids.device
    )  # OFT's STOP_INDEX
    full = torch.cat([ids, fill, stop], 1)
    labels = torch.cat([torch.full_like(ids, IGNORE_INDEX), fill, stop], 1)
    return {
        **obs,
        "input_ids": full,
        "attention_mask": torch.ones_like(full, dtype=torch.bool),
        "labels": labels,
    }
