"""Drop blocks for real: the ModuleLists shrink, and every counter that describes them follows.

    plan = drop_blocks(policy, {"language": [3, 7]})

After a drop the model is an ordinary, smaller instance of its class: training loss, `select_action` with its
KV cache, `save_pretrained` all run. What is kept consistent (from the adapter's Stack records):
  - the ModuleList itself (`parent.<attr>` replaced by the kept blocks, in order)
  - config counters (`num_hidden_layers`, SmolVLA's `num_vlm_layers` / `num_expert_layers`, ...)
  - per-layer config lists of the same length (`layer_types` in Qwen2 / Gemma configs)
  - attention `layer_idx` renumbered 0..n'-1 (the KV cache indexes layers by it)
  - the coupling rules (see `vlaprune.surgery.plan`)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlaprune.adapters import layout as find_layout
from vlaprune.adapters.counting import unique_params
from vlaprune.adapters.stack import Layout, Stack
from vlaprune.surgery.plan import BlockPlan, resolve_drops

PER_LAYER_LISTS = ("layer_types",)


def _set_dotted(obj: Any, dotted: str, value: Any) -> None:
    head, _, last = dotted.rpartition(".")
    for part in head.split(".") if head else []:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def shrink_stack(stack: Stack, drop: list[int]) -> None:
    """Remove blocks `drop` from `stack` and update its counters, per-layer lists and layer indices."""
    old = list(stack.blocks)
    keep = [i for i in range(len(old)) if i not in set(drop)]
    setattr(stack.parent, stack.attr, nn.ModuleList(old[i] for i in keep))
    for c in stack.counters:
        cfg = c.owner
        for name in PER_LAYER_LISTS:
            values = getattr(cfg, name, None)
            if isinstance(values, list) and len(values) == len(old):
                setattr(cfg, name, [values[i] for i in keep])
        setattr(cfg, c.attr, len(keep))
    if stack.layer_idx_attr:
        for new, block in enumerate(stack.blocks):
            _set_dotted(block, stack.layer_idx_attr, new)


def _component_params(lay: Layout) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in lay.stacks.values():
        out[s.component] = out.get(s.component, 0) + unique_params(s.blocks)
    return out


def drop_blocks(
    model: nn.Module, request: dict[str, list[int]], layout: Layout | None = None, stacks: str | None = None
) -> BlockPlan:
    """Physically remove the requested blocks (plus their coupled partners) and return the plan (keep it
    in the model's PruningRecord: `Loaded.drop_blocks` does).

    request: {stack or component: [block indices]} (0-based, indices of the model as it is now).
    Raises VlapruneError, before touching anything, for unknown stacks, out-of-range or duplicate
    indices, emptied stacks, and plans that break a coupling rule (with the nearest valid plans)."""
    lay = layout or find_layout(model, stacks)
    requested, drops, coupled = resolve_drops(lay, request)
    before = {n: len(s) for n, s in lay.stacks.items()}
    params_before = unique_params(model)
    comp_before = _component_params(lay)
    for name, idx in drops.items():
        shrink_stack(lay.stacks[name], idx)
    return BlockPlan(
        family=lay.family,
        model_class=type(model).__name__,
        drops={n: drops.get(n, []) for n in lay.stacks},
        requested=requested,
        coupled=coupled,
        blocks_before=before,
        blocks_after={n: len(s) for n, s in lay.stacks.items()},
        params_before=params_before,
        params_after=unique_params(model),
        component_params_before=comp_before,
        component_params_after=_component_params(lay),
    )
