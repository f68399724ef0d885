"""Plain transformers folders (config.json with "model_type" / "architectures"): load, record, rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.adapters.source import Source, first_line, remote_class
from vlaprune.errors import VlapruneError


def reads(cfg: dict[str, Any]) -> bool:
    return "model_type" in cfg or "architectures" in cfg


def load(folder: Path, cfg: dict, trust_remote_code: bool = False) -> nn.Module:
    import transformers

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
        raise VlapruneError(f"transformers could not load {folder}: {first_line(e)}{hint}") from None


def base_record(source: Source, stacks: str | None = None, trust_remote_code: bool = False) -> dict | None:
    """Class name and config of a model whose class transformers has; None for remote code or path-named
    stacks (rebuilt from the source folder)."""
    import transformers

    model = source.module
    if stacks or not hasattr(transformers, type(model).__name__):
        return None
    return {"kind": "transformers", "class": type(model).__name__, "config": model.config.to_dict()}


def rebuild(base: dict[str, Any], folder: Path | None = None, trust_remote_code: bool = False) -> Source:
    import transformers

    cls = getattr(transformers, base["class"], None)
    if cls is None:
        raise VlapruneError(
            f"transformers has no class {base['class']} to rebuild this checkpoint with (remote code?); "
            "re-create it from the original folder with --policy.trust_remote_code=true"
        )
    return Source(cls(cls.config_class.from_dict(base["config"])), "transformers")
