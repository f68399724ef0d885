"""Sublayer drops: remove only the attention or only the MLP of chosen blocks (the DTR paper's granularity
ablation: whole block 98.3% vs attention-only 91.9% vs MLP-only 65.6% on OpenVLA-OFT).

    plan = drop_sublayers(model, {"language": [1, 3]}, part="mlp")

A dropped sublayer's residual branch becomes exactly zero, h_out = h_in + (the other branch), which is what
the sublayer gate of `scoring.gates.virtual_gates(granularity="sublayer")` gives at 0. Where it is removed:
  part "mlp"   every stack: the block's `mlp` becomes a `Removed` module (no parameters, returns zeros of
               its input's shape); the norm before it stays (a few hundred parameters).
  part "attn"  blocks that run their own forward and keep no KV cache (vision encoders): the whole attention
               module becomes a `RemovedAttention` (q / k / v / o projections and the attention itself gone).
               Blocks that joint-attention code drives submodule by submodule (the language and action
               stacks of SmolVLA / pi0 / pi0.5) and blocks of language models (whose KV cache indexes each
               layer's attention): only the output projection goes; queries, keys and values stay, because
               the joint attention computes them for every stream at once and the action expert reads the
               language keys / values. The plan summary and the cost report say what was removed.
The stack keeps its depth, so no coupling rule concerns a sublayer drop. Parameter names of what stays are
unchanged; a pruned checkpoint reloads strictly once the plan is replayed (`replay_sublayers`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlaprune.adapters import layout as find_layout
from vlaprune.adapters.counting import unique_params
from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.adapters.parts import find_branches
from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError
from vlaprune.surgery.blocks import component_params
from vlaprune.surgery.plan import BlockPlan, normalize

PARTS = ("block", "attn", "mlp")  # --drop.part: whole blocks, attention-only, MLP-only
PART_NAMES = {"attn": "attention", "mlp": "MLP"}


class Removed(nn.Module):
    """Stands where a removed sublayer was: returns zeros (..., out_features) and holds no parameters.

    `weight` is an empty non-persistent buffer that follows the model's dtype and device (lerobot reads
    `o_proj.weight.dtype` and `mlp.up_proj.weight.dtype` to pick bf16); Linear children of the original get
    such stand-ins under their own names for the same reason. Nothing of it is saved in a state dict."""

    removed = True

    def __init__(self, original: nn.Module, out_features: int | None = None) -> None:
        super().__init__()
        ref = next(original.parameters(), None)
        dtype, device = (ref.dtype, ref.device) if ref is not None else (torch.float32, None)
        self.register_buffer("weight", torch.empty(0, dtype=dtype, device=device), persistent=False)
        self.out_features = out_features
        for name, child in original.named_children():
            if isinstance(child, nn.Linear):
                self.add_module(name, Removed(child, child.out_features))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features or x.shape[-1])


class RemovedAttention(nn.Module):
    """A removed self-attention of a block that calls `self_attn(hidden_states=...)` and unpacks
    (output, weights): returns (zeros like hidden_states, None). Its output projection stand-in keeps the
    original's name so residual-branch lookups (`parts.find_branches`) and gates still find the branch."""

    removed = True

    def __init__(self, attn: nn.Module, out_name: str) -> None:
        super().__init__()
        self.out_name = out_name
        self.add_module(out_name, Removed(attn.get_submodule(out_name), None))

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> tuple:
        h = hidden_states if hidden_states is not None else args[0]
        return getattr(self, self.out_name)(h), None


def is_removed(module: nn.Module | None) -> bool:
    return bool(getattr(module, "removed", False))


def removed_parts(block: nn.Module) -> list[str]:
    """Which sublayers of a block a sublayer drop already removed ("attn", "mlp")."""
    br = find_branches(block)
    if br is None:
        return []
    attn_module = block.get_submodule(br.attn.split(".")[0])
    out = []
    if is_removed(attn_module) or is_removed(block.get_submodule(br.attn)):
        out.append("attn")
    if is_removed(block.get_submodule(br.mlp)):
        out.append("mlp")
    return out


def whole_attention(lay: Layout, stack: str) -> bool:
    """Whether an attention-only drop removes the whole attention module of `stack`'s blocks (a vision
    encoder: blocks run their own forward, no KV cache, nobody reads their K/V) or only its output
    projection (joint-attention stacks, language models)."""
    coupled = {n for c in lay.couplings for n in (c.a, c.b)} | set(lay.keep_kv)
    coupled |= {k.reader for k in lay.keep_kv.values()}
    return lay.stacks[stack].component == "vision" and stack not in coupled


def _check(lay: Layout, name: str, i: int, part: str) -> None:
    block = lay.stacks[name].blocks[i]
    where = f"{name} block {i}"
    if is_kv_only(block):
        raise VlapruneError(
            f"{where} keeps only its K/V (an earlier keep-K/V drop): it has no {PART_NAMES[part]} left to "
            "remove; leave it out of the request"
        )
    if find_branches(block) is None:
        raise VlapruneError(
            f"{where} ({type(block).__name__}) has no recognisable {PART_NAMES[part]} sublayer (an attention "
            "module with o_proj/out_proj and an mlp/ffn); drop it whole with --drop.part=block"
        )
    gone = removed_parts(block)
    if part in gone:
        raise VlapruneError(
            f"{where}: its {PART_NAMES[part]} is already removed (an earlier sublayer drop); leave it out"
        )
    if gone:
        raise VlapruneError(
            f"{where}: its {PART_NAMES[gone[0]]} is already removed, so dropping its {PART_NAMES[part]} too "
            "leaves an empty block; drop it whole with --drop.part=block"
        )


def _remove(lay: Layout, name: str, i: int, part: str) -> None:
    block = lay.stacks[name].blocks[i]
    br = find_branches(block)
    assert br is not None  # _check ran first
    if part == "mlp":
        setattr(block, br.mlp, Removed(block.get_submodule(br.mlp)))
        return
    attn_name, out_name = br.attn.split(".")
    attn = block.get_submodule(attn_name)
    if whole_attention(lay, name):
        setattr(block, attn_name, RemovedAttention(attn, out_name))
    else:
        out = attn.get_submodule(out_name)
        setattr(attn, out_name, Removed(out, getattr(out, "out_features", None)))


def resolve_sublayers(lay: Layout, request: dict[str, list[int]], part: str) -> dict[str, list[int]]:
    """The normalized request ({stack: sorted blocks}) after every check `drop_sublayers` makes; touches
    nothing (the CLI calls it before measuring anything)."""
    if part not in PART_NAMES:
        raise VlapruneError(f"sublayer part {part!r}: choose one of {', '.join(PART_NAMES)}")
    requested = normalize(lay, request)
    for name, idx in requested.items():
        for i in idx:
            _check(lay, name, i, part)
    return requested


def drop_sublayers(
    model: nn.Module, request: dict[str, list[int]], part: str, layout: Layout | None = None
) -> BlockPlan:
    """Remove the attention (part "attn") or the MLP (part "mlp") of the requested blocks for real and return
    the plan. request: {stack or component: [block indices]} (0-based). Raises VlapruneError, touching
    nothing, for unknown stacks / indices and for blocks without that sublayer (kv-only layers, a sublayer
    already removed, unrecognised blocks)."""
    lay = layout or find_layout(model)
    requested = resolve_sublayers(lay, request, part)
    params_before = unique_params(model)
    comp_before = component_params(lay)
    for name, idx in requested.items():
        for i in idx:
            _remove(lay, name, i, part)
    sizes = {n: len(s) for n, s in lay.stacks.items()}
    return BlockPlan(
        family=lay.family,
        model_class=type(model).__name__,
        drops={n: [] for n in lay.stacks},
        requested=requested,
        coupled={},
        blocks_before=sizes,
        blocks_after=dict(sizes),
        params_before=params_before,
        params_after=unique_params(model),
        component_params_before=comp_before,
        component_params_after=component_params(lay),
        mode="sublayer",
        part=part,
        sublayers=requested,
        whole_attention={n: whole_attention(lay, n) for n in requested} if part == "attn" else {},
    )


def replay_sublayers(model: nn.Module, plan: BlockPlan, stacks: str | None = None) -> None:
    """Re-apply a recorded sublayer drop to a rebuilt model (loading a pruned checkpoint)."""
    drop_sublayers(model, plan.sublayers, plan.part, find_layout(model, stacks))
