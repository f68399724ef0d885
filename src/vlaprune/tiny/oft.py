"""A tiny OpenVLA-OFT checkpoint folder, written offline in seconds, laid out as OFT's fine-tuned checkpoints
(e.g. openvla/openvla-7b-oft-finetuned-libero-spatial):

    config.json                       model_type "openvla", auto_map naming only AutoConfig and
                                      AutoModelForVision2Seq (no AutoModel), norm_stats
    configuration_prismatic.py, modeling_prismatic.py   remote code (vlaprune.tiny.oft_remote)
    model.safetensors                 the VLA (vision towers, projector, Llama)
    action_head--<step>_checkpoint.pt        the L1 (or diffusion) head, a DDP state dict (`module.` keys)
    proprio_projector--<step>_checkpoint.pt  the proprio projector (with proprio=True)
    noisy_action_projector--<step>_checkpoint.pt  (diffusion head only)
    dataset_statistics.json, preprocessor_config.json, tokenizer files

    folder = write_tiny_oft(tmp / "oft")          # then --policy.path=folder --policy.trust_remote_code=true
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vlaprune.adapters.openvla.head import (
    DiffusionActionHead,
    L1RegressionActionHead,
    NoisyActionProjector,
    ProprioProjector,
    ddp_state_dict,
)
from vlaprune.tiny.tokenizer import build_tokenizer
from vlaprune.tiny.weights import make_nontrivial

REMOTE = Path(__file__).parent / "oft_remote"
AUTO_MAP = {
    "AutoConfig": "configuration_prismatic.OpenVLAConfig",
    "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
}
STATS_KEY = "libero_spatial_no_noops"
ACTION_DIM, PROPRIO_DIM, STEP = 7, 8, 5000


def norm_stats(seed: int = 0) -> dict[str, Any]:
    """OFT's dataset statistics layout: per dataset key, action / proprio q01, q99, mask, mean, std."""
    gen = torch.Generator().manual_seed(seed)

    def stats(dim: int) -> dict[str, list]:
        lo = -1 - torch.rand(dim, generator=gen)
        hi = 1 + torch.rand(dim, generator=gen)
        mask = [True] * (dim - 1) + [False]  # OFT leaves the gripper dimension unnormalized
        return {
            "q01": lo.tolist(),
            "q99": hi.tolist(),
            "mask": mask,
            "mean": [0.0] * dim,
            "std": [1.0] * dim,
            "min": (lo - 0.5).tolist(),
            "max": (hi + 0.5).tolist(),
        }

    return {STATS_KEY: {"action": stats(ACTION_DIM), "proprio": stats(PROPRIO_DIM), "num_trajectories": 3}}


def write_tiny_oft(
    folder: str | Path,
    *,
    seed: int = 0,
    layers: int = 4,
    hidden: int = 64,
    head: str = "l1",
    proprio: bool = True,
    head_hidden: int | None = None,
) -> Path:
    """Write the folder (see the module docstring). head: "l1", "diffusion" or "" (no head file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("configuration_prismatic.py", "modeling_prismatic.py"):
        shutil.copy2(REMOTE / name, folder / name)
    tok = build_tokenizer(folder, bos="<s>", eos="</s>", pad="<PAD>", unk="<unk>", vocab_size=512)
    stats = norm_stats(seed)
    config = _write_vla(folder, _text_config(tok, layers, hidden), stats, seed)
    (folder / "dataset_statistics.json").write_text(json.dumps(stats, indent=2))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(image_processor(config.image_sizes), indent=2)
    )
    _write_heads(folder, seed, hidden, head, proprio, head_hidden or hidden)
    return folder


def _text_config(tok: Any, layers: int, hidden: int) -> dict[str, Any]:
    """The Llama-2 text config of the tiny VLA: `layers` blocks of width `hidden`, the tokenizer's ids."""
    return {
        "vocab_size": 384,  # the tokenizer's 355 ids padded to a multiple of 64, as OpenVLA pads Llama-2's
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def _write_vla(folder: Path, text: dict[str, Any], stats: dict, seed: int) -> Any:
    """Build the VLA from the remote code copied into `folder` (seeded, non-trivial weights), save it with
    OFT's exact auto_map, and return its config."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cfg = {"model_type": "openvla", "auto_map": AUTO_MAP, "text_config": text, "norm_stats": stats}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    cls = get_class_from_dynamic_module(AUTO_MAP["AutoModelForVision2Seq"], str(folder))
    torch.manual_seed(seed)
    config = cls.config_class(text_config=text, norm_stats=stats, pad_token_id=text["pad_token_id"])
    config.auto_map = AUTO_MAP
    config.architectures = ["OpenVLAForActionPrediction"]
    make_nontrivial(cls(config), seed).eval().save_pretrained(str(folder))
    written = json.loads((folder / "config.json").read_text())
    written["auto_map"] = AUTO_MAP  # exactly OFT's: no AutoModel entry
    (folder / "config.json").write_text(json.dumps(written, indent=2))
    return config


def _write_heads(folder: Path, seed: int, hidden: int, head: str, proprio: bool, width: int) -> None:
    """The OFT component files: the action head ("l1" / "diffusion" with its noisy-action projector, or
    none) of MLP width `width`, and the proprio projector."""
    if head == "l1":
        _save(
            make_nontrivial(L1RegressionActionHead(hidden, width, ACTION_DIM), seed + 1),
            folder,
            "action_head",
        )
    elif head == "diffusion":
        _save(
            make_nontrivial(DiffusionActionHead(hidden, width, ACTION_DIM), seed + 1), folder, "action_head"
        )
        _save(make_nontrivial(NoisyActionProjector(hidden), seed + 3), folder, "noisy_action_projector")
    if proprio:
        _save(make_nontrivial(ProprioProjector(hidden, PROPRIO_DIM), seed + 2), folder, "proprio_projector")


def image_processor(sizes: list[int]) -> dict[str, Any]:
    """OFT's PrismaticImageProcessor config: per tower (DINOv2, SigLIP) input size, mean and std."""
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, s, s] for s in sizes],
        "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]],
        "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
    }


def _save(module: torch.nn.Module, folder: Path, name: str) -> None:
    torch.save(ddp_state_dict(module), folder / f"{name}--{STEP}_checkpoint.pt")


def tiny_oft_folder(**kw: Any) -> Path:
    """A fresh tiny OFT folder in a temporary directory (the `tiny:oft` builder)."""
    return write_tiny_oft(Path(tempfile.mkdtemp(prefix="vlaprune-tiny-oft-")) / "oft", **kw)
