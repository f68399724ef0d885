"""Configs of the pruned policy types: the family's config (fields as the pruned model has them) plus
`vlaprune`, the pruning record (base architecture, plans, stacks, trained episodes; see vlaprune's
`surgery/plugin.py`)."""

from dataclasses import dataclass, field
from typing import Any

from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pi0.configuration_pi0 import PI0Config
from lerobot.policies.pi05.configuration_pi05 import PI05Config
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig


@PreTrainedConfig.register_subclass("vlaprune_smolvla")
@dataclass
class VlapruneSmolVLAConfig(SmolVLAConfig):
    vlaprune: dict[str, Any] = field(default_factory=dict)


@PreTrainedConfig.register_subclass("vlaprune_pi0")
@dataclass
class VlaprunePI0Config(PI0Config):
    vlaprune: dict[str, Any] = field(default_factory=dict)


@PreTrainedConfig.register_subclass("vlaprune_pi05")
@dataclass
class VlaprunePI05Config(PI05Config):
    vlaprune: dict[str, Any] = field(default_factory=dict)
