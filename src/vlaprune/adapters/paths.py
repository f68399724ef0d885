"""Generic adapter: the user names the stacks by module path, e.g.
`--stacks language=model.layers,vision=vision_tower.blocks,action=action_head.blocks`.

Keys are a component (vision / language / action / projector) or `component.label` when a component has
several stacks. Blocks may sit in a ModuleList or an nn.Sequential (timm's ViTs).

OpenVLA / OpenVLA-OFT folders have their own adapter (`adapters.openvla`, no --stacks needed). The preset
`--stacks=openvla` names Prismatic's stacks for a bare VLA built in Python (LLM `language_model.model.layers`,
DINOv2 `vision_backbone.featurizer.blocks`, SigLIP `vision_backbone.fused_featurizer.blocks`); on a module
that holds the VLA as `vla` (e.g. `nn.ModuleDict(vla=vla, head=head)`) the paths get the `vla.` prefix and
OFT's head blocks (`<head>.model.mlp_resnet_blocks`, head named `head` or `action_head`) join as `action`.
"""

from __future__ import annotations

from torch import nn

from vlaprune.adapters.hf.layout import example_forward, stacks_from_paths
from vlaprune.adapters.lerobot.batch import inference_pass
from vlaprune.adapters.parts import find_branches
from vlaprune.adapters.source import is_lerobot
from vlaprune.adapters.stack import COMPONENTS, Layout
from vlaprune.errors import VlapruneError

PRESETS = {
    "openvla": "language=language_model.model.layers,"
    "vision.dino=vision_backbone.featurizer.blocks,"
    "vision.siglip=vision_backbone.fused_featurizer.blocks",
}
HOW = (
    "name the stacks by module path, e.g. --stacks=language=model.layers,vision=vision_tower.blocks "
    "(keys: vision, language, action, projector, optionally with .label)"
)


def preset(name: str, model: nn.Module | None = None) -> str:
    """The spec a preset name stands for, relative to where the VLA sits in `model` (see the docstring)."""
    spec = PRESETS[name]
    children = dict(model.named_children()) if model is not None else {}
    if name != "openvla" or "vla" not in children:
        return spec
    spec = ",".join(f"{k}=vla.{p}" for k, p in (item.split("=") for item in spec.split(",")))
    head = next((h for h in ("action_head", "head") if h in children), None)
    if head is not None and hasattr(children[head], "model"):
        spec += f",action={head}.model.mlp_resnet_blocks"
    return spec


def parse_stacks(spec: str, model: nn.Module | None = None) -> dict[str, str]:
    """'language=model.layers,vision.a=x.blocks' (or a preset name) -> {"language": "model.layers", ...}."""
    spec = preset(spec.strip(), model) if spec.strip() in PRESETS else spec
    names: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, eq, path = item.partition("=")
        key, path = key.strip(), path.strip()
        if not eq or not key or not path:
            raise VlapruneError(f"--stacks item {item!r} is not NAME=PATH; {HOW}")
        if key.split(".")[0] not in COMPONENTS:
            raise VlapruneError(f"--stacks key {key!r} is not a component {COMPONENTS}; {HOW}")
        if key in names:
            raise VlapruneError(f"--stacks names {key!r} twice; give the second one a label, e.g. {key}.b")
        names[key] = path
    if not names:
        raise VlapruneError(f"--stacks is empty; {HOW}")
    return names


def layout(model: nn.Module, spec: str) -> Layout:
    names = parse_stacks(spec, model)
    for key, path in names.items():
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            raise VlapruneError(
                f"--stacks {key}={path}: the model has no module at {path!r}; "
                f"list candidates with `python -c 'print(model)'` and {HOW}"
            ) from None
        if not isinstance(mod, nn.ModuleList | nn.Sequential) or len(mod) == 0:
            raise VlapruneError(
                f"--stacks {key}={path} names a {type(mod).__name__}, not a non-empty ModuleList or "
                "Sequential of blocks; point it at the list of layers itself"
            )
    if is_lerobot(model):
        forward, desc = inference_pass(model), "predict_action_chunk (batch 1)"
    else:
        forward, desc = example_forward(model)
    stacks = stacks_from_paths(model, names)
    for s in stacks.values():
        if len(s.blocks) and find_branches(s.blocks[0]) is None and hasattr(s.blocks[0], "ffn"):
            s.single_branch = "ffn"  # OFT's MLPResNetBlock: x + ffn(x)
    return Layout(
        family="paths",
        model=model,
        stacks=stacks,
        forward=forward,
        forward_desc=desc,
    )
