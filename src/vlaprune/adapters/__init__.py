"""Adapters: all architecture knowledge. Where the vision / language / action stacks of a model live, how
they are coupled, a block's parts, parameter and FLOP counting, and how checkpoints load.

`layout(model, stacks=None)` picks the adapter: an explicit `stacks` spec (generic, path-named) wins;
lerobot policies go by `config.type`; other transformers models are scanned automatically. Later stages
(scoring, surgery, recover, evaluate) ask the Layout and never name a module path.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vlaprune.adapters import hf, openvla, paths, pi, smolvla
from vlaprune.adapters.load import is_lerobot
from vlaprune.adapters.stack import Counter, Coupling, Layout, Stack
from vlaprune.errors import VlapruneError

ADAPTERS: dict[str, Callable[[nn.Module], Layout]] = {
    "smolvla": smolvla.layout,
    "pi0": pi.layout,
    "pi05": pi.layout,
    "openvla": openvla.layout,
    "hf": hf.layout,
}
# VLA -> base VLM tensor-name prefix rules, per family (`vlaprune diverge`, the dW criteria)
VLM_MAPS: dict[str, list[tuple[str, str]]] = {
    "identity": [],
    "smolvla": smolvla.VLM_MAP,
    "pi0": pi.VLM_MAP,
    "pi05": pi.VLM_MAP,
    "pi0-transformers5": pi.VLM_MAP_TRANSFORMERS5,
    "openvla": paths.VLM_MAP_OPENVLA,
    # an OpenVLA-OFT folder loaded as one policy (vla + action head) against the Prismatic VLM it started
    # from (same names without "vla."), or against the bare Llama-2 of its language model
    "oft": [("vla.", "")],
    "oft-llama": [("vla.language_model.", "")],
}

__all__ = [
    "ADAPTERS",
    "VLM_MAPS",
    "Coupling",
    "Counter",
    "Layout",
    "Stack",
    "family",
    "is_lerobot",
    "closed_loop_policy",
    "layout",
]


def family(model: nn.Module) -> str | None:
    """The adapter name for `model`, or None when no adapter recognizes it."""
    if isinstance(model, openvla.OpenVLAPolicy):
        return "openvla"
    cfg_type = getattr(getattr(model, "config", None), "type", None)
    if isinstance(cfg_type, str):  # a policy loaded through the lerobot plugin: vlaprune_<family>
        cfg_type = cfg_type.removeprefix("vlaprune_")
    if isinstance(cfg_type, str) and cfg_type in ADAPTERS:
        return cfg_type
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel) and hf.find_stack_paths(model):
        return "hf"
    return None


def layout(model: nn.Module, stacks: str | None = None) -> Layout:
    """The Layout of `model`. `stacks`: a path spec ('language=model.layers,...') or preset ('openvla')."""
    if stacks and stacks.strip() == "openvla" and isinstance(model, openvla.OpenVLAPolicy):
        return openvla.layout(model)  # the preset names what the OpenVLA adapter finds anyway
    if stacks:
        return paths.layout(model, stacks)
    name = family(model)
    if name is None:
        raise VlapruneError(
            f"no adapter knows {type(model).__name__} (supported: lerobot smolvla / pi0 / pi05, OpenVLA / "
            f"OpenVLA-OFT folders and transformers models with layer lists); {paths.HOW}"
        )
    return ADAPTERS[name](model)


def closed_loop_policy(model: nn.Module, env_type: str, task: str) -> nn.Module | None:
    """A family's own closed-loop pipeline for one task, when it brings one: a module with lerobot's rollout
    interface (`config.input_features`, `reset`, `select_action` on the raw env batch) and `env_defaults`
    (env keyword arguments), which takes the place of the policy and its processors. OpenVLA-OFT runs
    OFT's LIBERO evaluation (`adapters.openvla_closed_loop`); None for policies that use their processors."""
    if not isinstance(model, openvla.OpenVLAPolicy):
        return None
    if env_type != "libero":
        raise VlapruneError(
            f"closed-loop OpenVLA-OFT runs on LIBERO as OFT's own evaluation does (--env.type=libero), not "
            f"--env.type={env_type}"
        )
    from vlaprune.adapters.openvla_closed_loop import OFTLibero

    return OFTLibero(model, task.partition("/")[0])
