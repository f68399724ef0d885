"""Load a model as its checkpoint stores it: a lerobot policy folder, a transformers folder, a hub id, or a
registered builder (e.g. the tiny models, `tiny:pi0`, which register themselves from `vlaprune.tiny`).

This is the raw level: pruned checkpoints (plan.json) are rebuilt by `vlaprune.surgery.checkpoint`, and
`vlaprune.policy.load_policy` dispatches between the two and returns the one policy handle every stage uses.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.errors import VlapruneError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Source:
    """A model as loaded, and where it came from.

    kind: "lerobot" (a lerobot policy), "transformers" (a PreTrainedModel), "openvla" (an OpenVLA / OFT VLA
        with its separately saved modules, `adapters.openvla.OpenVLAPolicy`) or "module" (anything else).
    folder: the local checkpoint folder (processors, config), None for built models.
    builder: for built models, how to build the same architecture again, {"name": "tiny:pi0", **kwargs}
        (JSON, recorded in pruned checkpoints).
    tokenizers: hub tokenizer id -> local folder, for processors that hard-code a hub tokenizer.
    """

    module: nn.Module
    kind: str
    folder: Path | None = None
    builder: dict[str, Any] | None = None
    tokenizers: dict[str, str] = field(default_factory=dict)


# name ("tiny:pi0") -> build(config=None, **kwargs) -> Source; config rebuilds that architecture
BUILDERS: dict[str, Callable[..., Source]] = {}
_BUILT: weakref.WeakKeyDictionary[nn.Module, Source] = weakref.WeakKeyDictionary()


def register_builder(name: str, build: Callable[..., Source]) -> None:
    """Make `--policy.path=<name>` build a model (the tiny models register themselves this way)."""
    BUILDERS[name] = build


def is_lerobot(model: nn.Module) -> bool:
    """Is `model` a lerobot policy (a PreTrainedPolicy with input / output features)?"""
    cfg = getattr(model, "config", None)
    return hasattr(cfg, "input_features") and hasattr(cfg, "type")


def kind_of(model: nn.Module) -> str:
    from vlaprune.adapters.openvla import OpenVLAPolicy

    if is_lerobot(model):
        return "lerobot"
    if isinstance(model, OpenVLAPolicy):
        return "openvla"
    return "transformers" if hasattr(getattr(model, "config", None), "to_dict") else "module"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def build(name: str, config: Any = None, **kwargs: Any) -> Source:
    """A registered builder's model (with `config`: that architecture, e.g. to rebuild a pruned one)."""
    if name not in BUILDERS:
        what = "tiny model" if name.startswith("tiny:") else "built-in model"
        known = ", ".join(BUILDERS) or "none registered (import vlaprune.tiny to register the tiny models)"
        raise VlapruneError(f"unknown {what} {name!r}; choose one of {known}")
    return BUILDERS[name](config=config, **kwargs)


def remember(source: Source) -> nn.Module:
    """Record where a built module came from (its builder and tokenizers) without attributes on the
    module, so that `source_of(module)` finds it; returns the module."""
    _BUILT[source.module] = source
    return source.module


def source_of(module: nn.Module) -> Source:
    """Where `module` came from: its Source if a registered builder made it, else a bare Source."""
    return _BUILT.get(module) or Source(module, kind_of(module))


def load_source(path: str, trust_remote_code: bool = False) -> Source:
    """The model behind `path` (builder name, local folder or hub id), in eval mode; VlapruneError with a
    one-line fix on bad input."""
    if ":" in path and path.split(":", 1)[0].isalpha() and not Path(path).exists():
        return build(path)
    local = Path(path).expanduser()
    if local.exists():
        return load_folder(local, trust_remote_code)
    if HUB_ID.match(path):
        return load_folder(download(path), trust_remote_code)
    raise VlapruneError(f"--policy.path {path!r}: no such file or folder (and not a hub id like org/name)")


def download(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    """A hub snapshot's local folder (huggingface_hub's cache)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
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


def load_folder(folder: Path, trust_remote_code: bool = False) -> Source:
    """A lerobot policy folder (config.json with a "type"), an OpenVLA / OpenVLA-OFT one (with OFT's action
    head and projector files beside it: `adapters.openvla_load`) or a transformers one ("model_type")."""
    from vlaprune.adapters import openvla_load

    cfg = read_config(folder)
    if "type" in cfg:
        return Source(_load_lerobot(folder, cfg["type"]), "lerobot", folder)
    if openvla_load.is_openvla(cfg):
        return Source(openvla_load.load(folder, cfg, trust_remote_code), "openvla", folder)
    if "model_type" in cfg or "architectures" in cfg:
        return Source(_load_transformers(folder, cfg, trust_remote_code), "transformers", folder)
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

    from vlaprune.adapters.openvla_load import remote_class

    archs = cfg.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None and cfg.get("auto_map"):  # remote code; its auto_map may name no AutoModel (OpenVLA)
        cls = remote_class(folder, cfg, trust_remote_code)
    try:
        if cls is not None:
            return cls.from_pretrained(str(folder), trust_remote_code=trust_remote_code).eval()
        return transformers.AutoModel.from_pretrained(str(folder), trust_remote_code=trust_remote_code).eval()
    except Exception as e:
        hint = (
            " (pass --policy.trust_remote_code=true for remote-code models)" if not trust_remote_code else ""
        )
        raise VlapruneError(f"transformers could not load {folder}: {_first_line(e)}{hint}") from None


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
