"""Policy classes of the pruned types (lerobot finds `<Name>Policy` here by its naming convention). Each is
its family's policy class; `from_pretrained` builds the pruned model through vlaprune (base architecture,
replayed cuts, strict weights) instead of constructing the unpruned one."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from lerobot.policies.pi0.modeling_pi0 import PI0Policy
from lerobot.policies.pi05.modeling_pi05 import PI05Policy
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

from lerobot_policy_vlaprune.configuration_vlaprune import (
    VlaprunePI0Config,
    VlaprunePI05Config,
    VlapruneSmolVLAConfig,
)


def swap_config(model: torch.nn.Module, config: Any) -> None:
    """Make `config` the config of `model` and of every submodule that shared the old one (lerobot's policies
    hand one config object to their inner model), so CLI overrides (device, n_action_steps, ...) reach all."""
    old = model.config
    for m in model.modules():
        if getattr(m, "config", None) is old:
            m.config = config


def check_structure(model: torch.nn.Module, config: Any) -> None:
    """The loaded config must describe the architecture the plans produced: every field it shares with the
    rebuilt model's config and that the surgery changed (layer counters) must agree."""
    old = model.config
    for f in dataclasses.fields(old):
        if f.name.startswith("num_") and f.name.endswith("_layers") and hasattr(config, f.name):
            if getattr(config, f.name) != getattr(old, f.name):
                raise _error()(
                    f"config.json says {f.name}={getattr(config, f.name)} but the recorded cuts give "
                    f"{getattr(old, f.name)}; the config was edited: restore it from the checkpoint"
                )


def load_plugin_policy(
    cls: type, pretrained_name_or_path: str | Path, config: Any = None, revision: str | None = None
) -> torch.nn.Module:
    """What the plugin's `from_pretrained` returns: the pruned policy (vlaprune's `load_pruned`), with
    `config` (lerobot's, CLI overrides included) as its config everywhere, of class `cls` (the plugin's
    subclass of the family policy, so lerobot's name-based lookups find the plugin type), on
    `config.device`, in eval mode."""
    import vlaprune.tiny  # noqa: F401  (registers the tiny builders that tests' checkpoints rebuild with)
    from vlaprune.surgery.checkpoint import load_pruned

    folder = Path(pretrained_name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(pretrained_name_or_path), revision=revision))
    source, _ = load_pruned(folder)
    policy = source.module
    if config is None:
        from lerobot.configs.policies import PreTrainedConfig

        config = PreTrainedConfig.from_pretrained(folder)
    check_structure(policy, config)
    swap_config(policy, config)
    policy.__class__ = cls
    if getattr(config, "device", None):
        policy.to(config.device)
    return policy.eval()


def _error():
    from vlaprune.errors import VlapruneError

    return VlapruneError


class _LoadedByVlaprune:
    """What the three pruned types share: no construction from scratch, and vlaprune's loader."""

    name = "vlaprune"

    def __init__(self, config: Any, **kwargs: Any) -> None:
        raise ValueError(
            f"{self.name} is a pruned checkpoint type: it cannot be built from scratch; pass "
            "--policy.path=<a folder vlaprune or lerobot-train wrote>"
        )

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: Any = None, **kwargs: Any):
        from vlaprune.errors import VlapruneError

        try:
            return load_plugin_policy(cls, pretrained_name_or_path, config, revision=kwargs.get("revision"))
        except VlapruneError as e:
            if Path(sys.argv[0]).name.startswith("lerobot-"):  # inside lerobot-train / eval / record
                print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None  # one line and a non-zero exit, no traceback
            raise


class VlapruneSmolVLAPolicy(_LoadedByVlaprune, SmolVLAPolicy):
    config_class = VlapruneSmolVLAConfig
    name = "vlaprune_smolvla"


class VlaprunePI0Policy(_LoadedByVlaprune, PI0Policy):
    config_class = VlaprunePI0Config
    name = "vlaprune_pi0"


class VlaprunePI05Policy(_LoadedByVlaprune, PI05Policy):
    config_class = VlaprunePI05Config
    name = "vlaprune_pi05"
