"""Load a model to inspect or prune: a local checkpoint folder, a hub id, or a built-in tiny model.

`--policy.path` accepts
  tiny:<name>        a built-in tiny random-weight model (tiny:smolvla, tiny:pi0, tiny:pi05, tiny:llama, ...)
  a folder           a vlaprune pruned checkpoint (plan.json), a lerobot policy checkpoint (config.json
                     with a "type") or a transformers model (config.json with a "model_type")
  org/name           a hub id, downloaded with huggingface_hub where the hub is reachable
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from vlaprune.errors import VlapruneError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def load_model(path: str, trust_remote_code: bool = False, device: str = "") -> nn.Module:
    """The model behind `path`, in eval mode, on `device` if given; raises VlapruneError with a one-line
    fix on bad input."""
    model = _load(path, trust_remote_code)
    return place(model, device) if device else model


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
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "input_features") and hasattr(config, "device"):
        config.device = str(dev)
    return model.to(dev)


def _load(path: str, trust_remote_code: bool) -> nn.Module:
    if path.startswith("tiny:"):
        from vlaprune.tiny import TINY

        name = path.removeprefix("tiny:")
        if name not in TINY:
            raise VlapruneError(
                f"unknown tiny model {name!r}; choose one of {', '.join('tiny:' + k for k in TINY)}"
            )
        return TINY[name]()
    local = Path(path).expanduser()
    if local.exists():
        return load_folder(local, trust_remote_code)
    if HUB_ID.match(path):
        return load_folder(_download(path), trust_remote_code)
    raise VlapruneError(f"--policy.path {path!r}: no such file or folder (and not a hub id like org/name)")


def _download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        hf_hub_download(repo_id, "config.json")
        return Path(snapshot_download(repo_id))
    except Exception as e:
        raise VlapruneError(
            f"cannot fetch hub id {repo_id!r} ({_first_line(e)}); check the id and the network "
            "(HF_HUB_OFFLINE must be unset), or pass a local checkpoint folder"
        ) from None


def read_config(folder: Path) -> dict:
    """config.json of a checkpoint folder, with one-line errors for the usual mistakes."""
    if not folder.is_dir():
        raise VlapruneError(f"{folder} is a file; pass the checkpoint folder that holds config.json")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise VlapruneError(
            f"{folder} has no config.json, so it is not a policy checkpoint; pass the folder that holds "
            "config.json and model.safetensors (e.g. .../checkpoints/last/pretrained_model)"
        )
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise VlapruneError(f"{cfg_file} is not valid JSON ({e}); re-save the checkpoint") from None


def load_folder(folder: Path, trust_remote_code: bool = False) -> nn.Module:
    if (folder / "plan.json").is_file():  # a vlaprune pruned checkpoint: rebuild, replay, load strictly
        from vlaprune.surgery.checkpoint import load

        return load(folder)
    cfg = read_config(folder)
    if "type" in cfg:
        return _load_lerobot(folder, cfg["type"])
    if "model_type" in cfg or "architectures" in cfg:
        return _load_transformers(folder, cfg, trust_remote_code)
    raise VlapruneError(
        f"{folder}/config.json is neither a lerobot policy config (no 'type') nor a transformers config "
        "(no 'model_type'); pass a lerobot or transformers checkpoint folder"
    )


def _load_lerobot(folder: Path, policy_type: str) -> nn.Module:
    from lerobot.policies.factory import get_policy_class

    try:
        cls = get_policy_class(policy_type)
    except Exception:
        raise VlapruneError(
            f"{folder}: lerobot has no policy type {policy_type!r}; is the checkpoint from a newer lerobot?"
        ) from None
    try:
        return cls.from_pretrained(str(folder)).eval()
    except Exception as e:
        raise VlapruneError(f"lerobot could not load {policy_type} from {folder}: {_first_line(e)}") from None


def _load_transformers(folder: Path, cfg: dict, trust_remote_code: bool) -> nn.Module:
    import transformers

    archs = cfg.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    try:
        if cls is not None:
            return cls.from_pretrained(str(folder)).eval()
        return transformers.AutoModel.from_pretrained(str(folder), trust_remote_code=trust_remote_code).eval()
    except Exception as e:
        hint = (
            " (pass --policy.trust_remote_code=true for remote-code models)" if not trust_remote_code else ""
        )
        raise VlapruneError(f"transformers could not load {folder}: {_first_line(e)}{hint}") from None
