"""lerobot policy folders (config.json with a "type"): load one, record its base architecture, rebuild it.
SmolVLA, pi0, pi0.5 and every other lerobot policy share this format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.adapters.source import Source, build, first_line
from vlaprune.errors import VlapruneError


def reads(cfg: dict[str, Any]) -> bool:
    return "type" in cfg


def load(folder: Path, cfg: dict[str, Any], trust_remote_code: bool = False) -> nn.Module:
    from lerobot.policies.factory import get_policy_class

    policy_type = cfg["type"]
    try:
        cls = get_policy_class(policy_type)
    except Exception:
        raise VlapruneError(
            f"{folder}: lerobot has no policy type {policy_type!r}; is the checkpoint from a newer lerobot?"
        ) from None
    try:
        return cls.from_pretrained(str(folder)).eval()
    except Exception as e:
        raise VlapruneError(f"lerobot could not load {policy_type} from {folder}: {first_line(e)}") from None


def base_record(source: Source, stacks: str | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """The policy type and its config as draccus writes it (+ the builder of a built model)."""
    import draccus

    cfg = source.module.config
    rec = {"kind": "lerobot", "type": cfg.type, "config": draccus.encode(cfg)}
    return rec | ({"builder": source.builder} if source.builder else {})


def rebuild(base: dict[str, Any], folder: Path | None = None, trust_remote_code: bool = False) -> Source:
    """A random-weight policy of the recorded type and config (its builder's, for built models)."""
    import draccus
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    cfg = draccus.decode(PreTrainedConfig, {"type": base["type"], **base["config"]})
    if hasattr(cfg, "load_vlm_weights"):
        cfg.load_vlm_weights = False  # every weight comes from the checkpoint
    if base.get("builder"):
        b = dict(base["builder"])
        return build(b.pop("name"), config=cfg, **b)
    return Source(get_policy_class(base["type"])(cfg), "lerobot")
