"""Load a model as its checkpoint stores it: a lerobot policy folder, a transformers folder, a hub id, or a
registered builder (e.g. the tiny models, `tiny:pi0`, which register themselves from `vlaprune.tiny`).

Which family reads a folder is decided here, once, by the family table's folder formats
(`adapters.families.FOLDERS`). This is the raw level: pruned checkpoints (plan.json) are rebuilt by
`vlaprune.surgery.checkpoint`, and `vlaprune.policy.load_policy` dispatches between the two and returns the
one policy handle every stage uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from vlaprune.adapters.families import FOLDERS, kind_of
from vlaprune.adapters.source import (
    BUILDERS,
    BUILT,
    Source,
    build,
    first_line,
    is_lerobot,
    read_config,
    register_builder,
    remember,
)
from vlaprune.errors import VlapruneError

__all__ = [
    "BUILDERS",
    "HUB_ID",
    "Source",
    "build",
    "download",
    "is_lerobot",
    "kind_of",
    "load_folder",
    "load_source",
    "place",
    "register_builder",
    "remember",
    "source_of",
]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def source_of(module: nn.Module) -> Source:
    """Where `module` came from: its Source if a registered builder made it, else a bare Source."""
    return BUILT.get(module) or Source(module, kind_of(module))


def load_source(path: str, trust_remote_code: bool = False, head: str = "") -> Source:
    """The model behind `path` (builder name, local folder or hub id), in eval mode; VlapruneError with a
    one-line fix on bad input. head: a freshly initialised action head of this kind (`load_folder`)."""
    if ":" in path and path.split(":", 1)[0].isalpha() and not Path(path).exists():
        if head:
            raise VlapruneError(f"--policy.oft_head applies to OpenVLA checkpoint folders, not {path}")
        return build(path)
    local = Path(path).expanduser()
    if local.exists():
        return load_folder(local, trust_remote_code, head)
    if HUB_ID.match(path):
        return load_folder(download(path), trust_remote_code, head)
    raise VlapruneError(f"--policy.path {path!r}: no such file or folder (and not a hub id like org/name)")


def download(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    """A hub snapshot's local folder (huggingface_hub's cache)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as e:
        raise VlapruneError(
            f"cannot fetch hub id {repo_id!r} ({first_line(e)}); check the id and the network "
            "(HF_HUB_OFFLINE must be unset), or pass a local checkpoint folder"
        ) from None


def load_folder(folder: Path, trust_remote_code: bool = False, head: str = "") -> Source:
    """The model of a checkpoint folder, read by the first folder format of the family table that reads its
    config.json: lerobot ("type"), OpenVLA / OFT (with OFT's head files: `adapters.openvla.load`), or
    transformers ("model_type"). head: instead of the folder's own head, a freshly initialised one of this
    kind (`--policy.oft_head`; formats with `Folder.load_with_head` only)."""
    cfg = read_config(folder)
    for fmt in FOLDERS.values():
        if fmt.reads(cfg) and head:
            if fmt.load_with_head is None:
                raise VlapruneError(f"--policy.oft_head applies to OpenVLA folders; {folder} is not one")
            return Source(fmt.load_with_head(folder, cfg, trust_remote_code, head), fmt.kind, folder)
        if fmt.reads(cfg):
            return Source(fmt.load(folder, cfg, trust_remote_code), fmt.kind, folder)
    raise VlapruneError(
        f"{folder}/config.json is neither a lerobot policy config (no 'type') nor a transformers config "
        "(no 'model_type'); pass a lerobot or transformers checkpoint folder"
    )


def place(model: nn.Module, device: str) -> nn.Module:
    """`model` moved to `device`; a lerobot policy's config.device follows, so its processors move every
    batch there too."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VlapruneError(
            f"--policy.device={device!r} is not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= n_cuda:
        raise VlapruneError(
            f"--policy.device={device}: torch sees {n_cuda or 'no'} CUDA device(s) here; "
            + (f"use cuda:0..{n_cuda - 1} or cpu" if n_cuda else "use --policy.device=cpu")
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VlapruneError(f"--policy.device={device}: MPS is not available here; use --policy.device=cpu")
    if is_lerobot(model) and hasattr(model.config, "device"):
        model.config.device = str(dev)
    return model.to(dev)
