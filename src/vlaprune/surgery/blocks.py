"""Drop blocks for real: the ModuleLists shrink, and every counter that describes them follows.

    plan = drop_blocks(policy, {"language": [3, 7]})

After a drop the model is an ordinary, smaller instance of its class: training loss, `select_action` with its
KV cache, `save_pretrained` all run. What is kept consistent (from the adapter's Stack records):
  - the ModuleList itself (`parent.<attr>` replaced by the kept blocks, in order)
  - config counters (`num_hidden_layers`, SmolVLA's `num_vlm_layers` / `num_expert_layers`, ...)
  - per-layer config lists of the same length (`layer_types` in Qwen2 / Gemma configs)
  - attention `layer_idx` renumbered 0..n'-1 (the KV cache indexes layers by it)
  - the read-out block of stacks the model reads below their top (Prismatic's vision towers read block
    depth-2): re-bound so that the same block feeds the projector; nn.Sequential stacks stay Sequential
  - the coupling rules (see `vlaprune.surgery.plan`)

Keep-K/V drops (mode "auto" / "keep_kv", the default for the language stack of SmolVLA / pi0 / pi0.5): the
block is replaced, at its index, by a kv-only layer (input norm + k/v projections, `adapters.keep_kv`) and
the family's joint forward is taken over by an instance-level override that runs such layers (the adapter's
`KeepKV.install`). The stack keeps its depth, so counters, layer indices and partners stay as they are.

Action-only drops (mode "auto" / "keep_kv", the default for the action expert of SmolVLA / pi0 / pi0.5): the
block is replaced, at its index, by a `SkippedBlock` (no parameters; its tokens pass through) and the same
override learns to pass it; every language block stays. Applied before keep-K/V drops, so that a language
block whose partner just went keeps nothing (nobody reads its K/V).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlaprune.adapters import layout as find_layout
from vlaprune.adapters.counting import unique_params
from vlaprune.adapters.keep_kv import make_kv_only
from vlaprune.adapters.skipped import is_skipped, make_skipped
from vlaprune.adapters.stack import Layout, Stack
from vlaprune.errors import VlapruneError
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
    kept = [old[i] for i in keep]
    sequential = isinstance(stack.blocks, nn.Sequential)  # timm's ViT blocks stay a Sequential
    setattr(stack.parent, stack.attr, nn.Sequential(*kept) if sequential else nn.ModuleList(kept))
    if stack.readout is not None:  # the same block stays the read-out (resolve_drops refused dropping it)
        stack.readout.rebind(keep.index(stack.readout.index))
    for c in stack.counters:
        cfg = c.owner
        for name in PER_LAYER_LISTS:
            values = getattr(cfg, name, None)
            if isinstance(values, list) and len(values) == len(old):
                setattr(cfg, name, [values[i] for i in keep])
        setattr(cfg, c.attr, len(keep))
    if stack.layer_idx_attr:
        for new, block in enumerate(stack.blocks):
            if is_skipped(block):
                block.layer_idx = new
            else:
                _set_dotted(block, stack.layer_idx_attr, new)


def keep_kv_only(lay: Layout, kv_only: dict[str, list[int]]) -> dict[str, list[int]]:
    """Turn blocks into kv-only layers in place (same index) and install the family's kv-only-aware joint
    forward; returns the parameters each kept block still holds, per stack."""
    kept: dict[str, list[int]] = {}
    for name, idx in kv_only.items():
        if name not in lay.keep_kv:
            raise VlapruneError(
                f"{name}: this model has no keep-K/V support for it (plan from another model?)"
            )
        spec, blocks = lay.keep_kv[name], lay.stacks[name].blocks
        for i in idx:
            blocks[i] = make_kv_only(blocks[i], keep=spec.read[i])
            kept.setdefault(name, []).append(unique_params(blocks[i]))
        spec.install()
    return kept


def skip_in_place(lay: Layout, skipped: dict[str, list[int]]) -> None:
    """Replace blocks by pass-through `SkippedBlock`s at their index (action-only drops) and install the
    family's joint forward that passes them."""
    for name, idx in skipped.items():
        if name not in lay.skip_in_place:
            raise VlapruneError(
                f"{name}: this model cannot skip its blocks in place (plan from another model?)"
            )
        blocks = lay.stacks[name].blocks
        for i in idx:
            blocks[i] = make_skipped(blocks[i])
        lay.skip_in_place[name].install()


def component_params(lay: Layout) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in lay.stacks.values():
        out[s.component] = out.get(s.component, 0) + unique_params(s.blocks)
    return out


def drop_blocks(
    model: nn.Module,
    request: dict[str, list[int]],
    layout: Layout | None = None,
    stacks: str | None = None,
    mode: str = "auto",
) -> BlockPlan:
    """Physically remove the requested blocks (plus their coupled partners; language blocks of joint-
    attention policies keep their K/V in modes "auto" / "keep_kv") and return the plan (keep it in the
    model's PruningRecord: `Loaded.drop_blocks` does).

    request: {stack or component: [block indices]} (0-based, indices of the model as it is now).
    mode: "auto" | "keep_kv" | "pair" (`vlaprune.surgery.plan`).
    Raises VlapruneError, before touching anything, for unknown stacks, out-of-range or duplicate
    indices, emptied stacks, and plans that break a coupling rule (with the nearest valid plans)."""
    lay = layout or find_layout(model, stacks)
    requested, drops, coupled, kv_only, skipped = resolve_drops(lay, request, mode)
    before = {n: len(s) for n, s in lay.stacks.items()}
    params_before = unique_params(model)
    comp_before = component_params(lay)
    if skipped:  # first, so that the layout's read flags see the partners that went
        skip_in_place(lay, skipped)
        lay = find_layout(model, stacks)
    kv_params = keep_kv_only(lay, kv_only)  # before any whole drop: kv_only indices are those before it
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
        component_params_after=component_params(lay),
        mode="+".join(m for m, on in (("keep_kv", kv_only), ("action_only", skipped)) if on) or "pair",
        kv_only=kv_only,
        kv_params=kv_params,
        skipped=skipped,
    )


def replay_blocks(model: nn.Module, plan: BlockPlan, stacks: str | None = None) -> None:
    """Re-apply a recorded BlockPlan to a rebuilt model (loading a pruned checkpoint): its skipped blocks,
    then its kv-only blocks (indices of both are those before the plan), then its whole-block drops."""
    if plan.skipped:
        skip_in_place(find_layout(model, stacks), plan.skipped)
    keep_kv_only(find_layout(model, stacks), plan.kv_only)
    drop_blocks(model, {n: idx for n, idx in plan.drops.items() if idx}, stacks=stacks, mode="pair")
