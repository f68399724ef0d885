"""What every family's loader shares: `Source` (a model as loaded and where it came from), the registered
builders (`--policy.path=tiny:pi0`), config.json reading and remote-code model classes.

Which family reads a folder is decided in one place, `adapters.load.load_folder`, through the family table.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.errors import VlapruneError

AUTO_CLASSES = ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModelForCausalLM", "AutoModel")


@dataclass
class Source:
    """A model as loaded, and where it came from.

    kind: the folder format it loads as, the `Folder.kind` of its family ("lerobot" for lerobot policies,
        "transformers" for a PreTrainedModel, "openvla" for an OpenVLA / OFT VLA with its separately saved
        modules), or "module" (anything else).
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
BUILT: weakref.WeakKeyDictionary[nn.Module, Source] = weakref.WeakKeyDictionary()


def register_builder(name: str, build: Callable[..., Source]) -> None:
    """Make `--policy.path=<name>` build a model (the tiny models register themselves this way)."""
    BUILDERS[name] = build


def build(name: str, config: Any = None, **kwargs: Any) -> Source:
    """A registered builder's model (with `config`: that architecture, e.g. to rebuild a pruned one)."""
    if name not in BUILDERS:
        what = "tiny model" if name.startswith("tiny:") else "built-in model"
        known = ", ".join(BUILDERS) or "none registered (import vlaprune.tiny to register the tiny models)"
        raise VlapruneError(f"unknown {what} {name!r}; choose one of {known}")
    return BUILDERS[name](config=config, **kwargs)


def remember(source: Source) -> nn.Module:
    """Record where a built module came from (its builder and tokenizers) without attributes on the
    module, so that `adapters.load.source_of(module)` finds it; returns the module."""
    BUILT[source.module] = source
    return source.module


def is_lerobot(model: nn.Module) -> bool:
    """Is `model` a lerobot policy (a PreTrainedPolicy with input / output features)?"""
    cfg = getattr(model, "config", None)
    return hasattr(cfg, "input_features") and hasattr(cfg, "type")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


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


def remote_class(folder: Path, cfg: dict[str, Any], trust_remote_code: bool) -> type:
    """The model class the folder's remote code defines (the first of AUTO_CLASSES its auto_map names)."""
    auto = cfg.get("auto_map") or {}
    ref = next((auto[k] for k in AUTO_CLASSES if k in auto), None)
    if ref is None:
        raise VlapruneError(
            f"{folder}/config.json has no auto_map entry for a model class (OpenVLA checkpoints map "
            "AutoModelForVision2Seq to modeling_prismatic.OpenVLAForActionPrediction); re-download the folder"
        )
    if not trust_remote_code:
        raise VlapruneError(
            f"{folder} runs its own model code ({ref.split('.')[0]}.py, as OpenVLA checkpoints do); pass "
            "--policy.trust_remote_code=true if you trust it"
        )
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        return get_class_from_dynamic_module(ref, str(folder))
    except Exception as e:  # noqa: BLE001  (missing file, import error inside the remote code)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise VlapruneError(f"cannot import {ref} from {folder}: {type(e).__name__}: {first}") from None
