"""Adapters: all architecture knowledge. Where the vision / language / action stacks of a model live, how
they are coupled, a block's parts, parameter and FLOP counting, and how checkpoints load.

One folder per model family (smolvla/, pi/, openvla/, hf/; lerobot/ holds what every lerobot policy
shares), each filling one entry of the family table `FAMILIES[name] -> Family` (`family.py`): its layout,
folder format, batch format and loss, action prediction, closed-loop mapping. `layout(model, stacks=None)`
picks the adapter: an explicit `stacks` spec (generic, path-named) wins; otherwise the family that owns the
model. Later stages (scoring, surgery, recover, evaluate) ask the Layout or the table and never test a family
themselves.
"""

from __future__ import annotations

import contextlib

from torch import nn

from vlaprune.adapters import paths
from vlaprune.adapters.families import FAMILIES, FOLDERS, family_of, kind_of
from vlaprune.adapters.family import DataFormat, Family, Folder
from vlaprune.adapters.source import is_lerobot
from vlaprune.adapters.stack import Counter, Coupling, Layout, Stack
from vlaprune.errors import VlapruneError

# VLA -> base VLM tensor-name prefix rules (`vlaprune diverge --vlm_map`, the dW criteria), from the families
VLM_MAPS: dict[str, list[tuple[str, str]]] = {"identity": []} | {
    name: rules for f in FAMILIES.values() for name, rules in f.vlm_maps.items()
}

__all__ = [
    "FAMILIES",
    "FOLDERS",
    "VLM_MAPS",
    "Coupling",
    "Counter",
    "DataFormat",
    "Family",
    "Folder",
    "Layout",
    "Stack",
    "closed_loop_policy",
    "family",
    "family_of",
    "inference",
    "is_lerobot",
    "kind_of",
    "layout",
]


def family(model: nn.Module) -> str | None:
    """The adapter name for `model` (a family with a layout), or None when no adapter recognizes it."""
    fam = family_of(model)
    return fam.name if fam is not None and fam.layout is not None else None


def layout(model: nn.Module, stacks: str | None = None) -> Layout:
    """The Layout of `model`. `stacks`: a path spec ('language=model.layers,...') or preset ('openvla')."""
    fam = family_of(model)
    preset = (stacks or "").strip()
    if preset in paths.PRESETS and fam is not None and fam is FAMILIES.get(preset):
        return fam.layout(model)  # the preset names what the family's adapter finds anyway
    if stacks:
        return paths.layout(model, stacks)
    if fam is None or fam.layout is None:
        raise VlapruneError(
            f"no adapter knows {type(model).__name__} (supported: lerobot smolvla / pi0 / pi05, OpenVLA / "
            f"OpenVLA-OFT folders and transformers models with layer lists); {paths.HOW}"
        )
    return fam.layout(model)


def inference(model: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which `model` runs its family's faster inference code (`Family.inference`: SmolVLA's
    joint forward), undone on exit; a no-op for other families."""
    fam = family_of(model)
    return fam.inference(model) if fam is not None and fam.inference is not None else contextlib.nullcontext()


def closed_loop_policy(model: nn.Module, env_type: str, task: str) -> nn.Module | None:
    """A family's own closed-loop pipeline for one task, when it brings one: a module with lerobot's rollout
    interface (`config.input_features`, `reset`, `select_action` on the raw env batch) and `env_defaults`
    (env keyword arguments), which takes the place of the policy and its processors. OpenVLA-OFT runs
    OFT's LIBERO evaluation (`adapters.openvla.closed_loop`); None for policies that use their processors."""
    fam = family_of(model)
    return fam.closed_loop(model, env_type, task) if fam is not None else None
