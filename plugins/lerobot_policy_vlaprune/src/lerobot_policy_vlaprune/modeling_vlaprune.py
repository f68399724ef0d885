"""Policy classes of the pruned types (lerobot finds `<Name>Policy` here by its naming convention). Each is
its family's policy class; `from_pretrained` builds the pruned model through vlaprune (base architecture,
replayed cuts, strict weights) instead of constructing the unpruned one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lerobot.policies.pi0.modeling_pi0 import PI0Policy
from lerobot.policies.pi05.modeling_pi05 import PI05Policy
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

from lerobot_policy_vlaprune.configuration_vlaprune import (
    VlaprunePI0Config,
    VlaprunePI05Config,
    VlapruneSmolVLAConfig,
)


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
        from vlaprune.surgery.plugin import load_plugin_policy

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
