"""The parts of one block, by name: the one place that knows how transformer blocks name their submodules.

Residual branches (for gates and probes), FFN channels and attention heads (for unit scoring and pruning)
are all found here, for Llama / Gemma / Qwen2 / SigLIP / ViT / GPT-2 naming. lerobot's SmolVLA / pi0 /
pi0.5 call these submodules directly instead of the block's forward, so everything that observes or cuts a
block works on them, never on the block's forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from vlaprune.errors import VlapruneError

ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
ATTN_OUT_NAMES = ("o_proj", "out_proj", "dense", "proj", "c_proj")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "ffwd")
ENTRY_NAMES = ("input_layernorm", "layer_norm1", "ln_1", "norm1", "layernorm_before")
FFN_IN = (("gate_proj", "up_proj"), ("fc1",))  # Linear layers whose rows are FFN channels
FFN_OUT = ("down_proj", "fc2")  # the Linear whose columns are FFN channels
QKV = ("q_proj", "k_proj", "v_proj")


@dataclass
class Branches:
    """Where a pre-norm residual block's two branches end, as paths inside the block.

    attn: the attention output projection (its output is the branch added to the residual stream).
    mlp: the MLP (its output is the second branch).
    entry: the first norm, whose input is the block's input h_in."""

    attn: str
    mlp: str
    entry: str | None


def find_branches(block: nn.Module) -> Branches | None:
    """The residual branches of a transformer block, or None when its naming is not recognised."""
    children = dict(block.named_children())
    attn_name = next((n for n in ATTN_NAMES if n in children), None)
    mlp = next((n for n in MLP_NAMES if n in children), None)
    if attn_name is None or mlp is None:
        return None
    sub = dict(children[attn_name].named_children())
    out = next((n for n in ATTN_OUT_NAMES if n in sub), None)
    if out is None:
        return None
    entry = next((n for n in ENTRY_NAMES if n in children), None)
    return Branches(attn=f"{attn_name}.{out}", mlp=mlp, entry=entry)


def _refuse_kv_only(block: nn.Module) -> None:
    if getattr(block, "kv_only", False):
        raise VlapruneError(
            "a kv-only block (what a keep-K/V drop leaves: input norm + k/v projections) has no FFN channels "
            "or query heads to prune; leave it out of the unit plan"
        )


def ffn_parts(block: nn.Module) -> tuple[nn.Module, list[str], str]:
    """(mlp module, names of the Linear layers whose rows are channels, name of the one whose columns are)."""
    _refuse_kv_only(block)
    mlp = getattr(block, "mlp", None)
    if mlp is None:
        raise VlapruneError(f"{type(block).__name__} has no `mlp`; FFN channels cannot be pruned there")
    if getattr(mlp, "removed", False):
        raise VlapruneError(
            "this block's MLP was removed by an MLP-only drop: no FFN channels left; leave it out of the plan"
        )
    for ins in FFN_IN:
        if all(hasattr(mlp, n) for n in ins):
            out = next(n for n in FFN_OUT if hasattr(mlp, n))
            return mlp, list(ins), out
    raise VlapruneError(f"{type(mlp).__name__}: no gate/up/down (or fc1/fc2) projections to prune")


def attn_parts(block: nn.Module) -> dict[str, Any]:
    """{"attn": module, "path": its name in the block, "o": output projection name, "head_dim", "n_q",
    "n_kv", "qkv": None | name of a fused projection} of a block's self-attention: separate q / k / v
    projections (Llama / Gemma / SigLIP: `self_attn`) or timm's fused `attn.qkv` (rows: all q, then all k,
    then all v; n_q == n_kv == num_heads)."""
    _refuse_kv_only(block)
    attn, path = getattr(block, "self_attn", None), "self_attn"
    fused = attn is None and isinstance(getattr(getattr(block, "attn", None), "qkv", None), nn.Linear)
    if fused:
        attn, path = block.attn, "attn"
    if attn is None or not (fused or all(hasattr(attn, n) for n in QKV)):
        raise VlapruneError(
            f"{type(block).__name__}: no self_attn with q/k/v projections (or attn.qkv): no heads to prune"
        )
    o_name = next(n for n in ATTN_OUT_NAMES if hasattr(attn, n))
    if getattr(attn, "removed", False) or getattr(getattr(attn, o_name), "removed", False):
        raise VlapruneError(
            "this block's attention output was removed by an attention-only drop: no heads to prune; leave "
            "it out of the plan"
        )
    d = attn.head_dim
    n_q = attn.qkv.out_features // (3 * d) if fused else attn.q_proj.out_features // d
    return {
        "attn": attn,
        "path": path,
        "o": o_name,
        "head_dim": d,
        "n_q": n_q,
        "n_kv": n_q if fused else attn.k_proj.out_features // d,
        "qkv": "qkv" if fused else None,
    }
