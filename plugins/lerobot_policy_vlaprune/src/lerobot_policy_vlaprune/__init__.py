"""lerobot policy plugin for vlaprune's pruned checkpoints.

lerobot's tools import this package at start (its distribution name starts with `lerobot_policy_`). It
registers one policy type per supported family, `vlaprune_smolvla`, `vlaprune_pi0`, `vlaprune_pi05`: the
family's config plus the pruning record (`vlaprune` field), and a policy class whose `from_pretrained`
rebuilds the base architecture, replays the recorded cuts and loads the weights strictly
(`vlaprune.surgery.plugin`). Everything else (training, evaluation, processors) is the family's own code.
"""

from lerobot_policy_vlaprune.configuration_vlaprune import (
    VlaprunePI0Config,
    VlaprunePI05Config,
    VlapruneSmolVLAConfig,
)

__all__ = ["VlaprunePI05Config", "VlaprunePI0Config", "VlapruneSmolVLAConfig"]


def _async_inference_knows_us() -> None:
    """lerobot's async inference server accepts only the policy types in its SUPPORTED_POLICIES list."""
    try:
        from lerobot.async_inference import constants
    except Exception:  # optional part of lerobot (grpc)
        return
    for name in ("vlaprune_smolvla", "vlaprune_pi0", "vlaprune_pi05"):
        if name not in constants.SUPPORTED_POLICIES:
            constants.SUPPORTED_POLICIES.append(name)


_async_inference_knows_us()
