"""Structured unit pruning: FFN channels and attention heads removed for real (the Linear layers shrink).

FFN channel c of a block: row c of gate_proj / up_proj (fc1) and column c of down_proj (fc2).
Attention head h: rows h*d..(h+1)*d of q_proj and the same columns of o_proj; KV head g: those rows of
k_proj / v_proj. Grouped-query attention (n_q = G * n_kv query heads, G per KV head) is kept valid in one
of two ways (`heads=`):
  groups  remove whole KV groups: a KV head and its G query heads (G unchanged);
  query   remove the same number of query heads inside every group (KV heads kept, G shrinks).
Attention without grouping (n_q == n_kv, e.g. SigLIP) always prunes whole heads.
timm's fused `attn.qkv` (OpenVLA's vision towers) holds head h's rows in each of its q, k and v parts.

Two removals (`removal=`), judged the same way:
  real    the Linear layers shrink (fewer parameters and FLOPs);
  masked  the units are zeroed in place, shapes kept (what the divergence paper's public code compares
          with): the same function as `real` for the same units, and no parameter or FLOP saving.
Attention heads of coupled stacks (SmolVLA / pi0 / pi0.5 run one attention over the language and action
streams together, and pi0 hard-codes 8 query heads) cannot be removed for real per stack; their *query*
heads can be masked (the rows of q_proj and the columns of o_proj zeroed, as the public code does for
pi0.5), while their K / V heads, which the action expert reads, stay.
A block's spec may list Linear paths under "bias": those get a bias (zeros when created), where FLAP's bias
compensation writes the removed units' mean contribution.
"""

from __future__ import annotations

import torch
from torch import nn

from vlaprune.adapters import layout as find_layout
from vlaprune.adapters.counting import unique_params
from vlaprune.adapters.parts import attn_parts, ffn_parts
from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError
from vlaprune.surgery.plan import UnitPlan


@torch.no_grad()
def slice_linear(lin: nn.Linear, rows: list[int] | None = None, cols: list[int] | None = None) -> nn.Linear:
    """A new Linear holding only `rows` (outputs) and `cols` (inputs) of `lin`."""
    w = lin.weight
    r = torch.tensor(rows, device=w.device) if rows is not None else None
    c = torch.tensor(cols, device=w.device) if cols is not None else None
    w = w if r is None else w.index_select(0, r)
    w = w if c is None else w.index_select(1, c)
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if lin.bias is not None:
        new.bias.copy_(lin.bias if r is None else lin.bias.index_select(0, r))
    new.requires_grad_(lin.weight.requires_grad)
    return new


def prune_ffn(block: nn.Module, keep: list[int]) -> None:
    mlp, ins, out = ffn_parts(block)
    n = getattr(mlp, ins[0]).out_features
    _check_keep(keep, n, "FFN channels")
    for name in ins:
        setattr(mlp, name, slice_linear(getattr(mlp, name), rows=keep))
    setattr(mlp, out, slice_linear(getattr(mlp, out), cols=keep))
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def _rows(heads: list[int], d: int) -> list[int]:
    return [h * d + i for h in heads for i in range(d)]


def prune_heads(block: nn.Module, q_keep: list[int], kv_keep: list[int]) -> None:
    """Keep query heads `q_keep` and KV heads `kv_keep`; the grouping must stay uniform."""
    p = attn_parts(block)
    attn, d, n_q, n_kv = p["attn"], p["head_dim"], p["n_q"], p["n_kv"]
    _check_keep(q_keep, n_q, "query heads")
    _check_keep(kv_keep, n_kv, "KV heads")
    g = n_q // n_kv
    per_group = [sum(1 for h in q_keep if h // g == k) for k in kv_keep]
    if any(h // g not in kv_keep for h in q_keep) or len(set(per_group)) != 1:
        raise VlapruneError(
            f"head plan breaks grouped-query attention: every kept KV head needs the same number "
            f"of its own query heads (got {per_group} for KV heads {kv_keep})"
        )
    if p["qkv"]:
        rows = [part * n_q * d + r for part in range(3) for r in _rows(q_keep, d)]
        attn.qkv = slice_linear(attn.qkv, rows=rows)
        setattr(attn, p["o"], slice_linear(getattr(attn, p["o"]), cols=_rows(q_keep, d)))
        attn.num_heads = len(q_keep)
        return
    attn.q_proj = slice_linear(attn.q_proj, rows=_rows(q_keep, d))
    attn.k_proj = slice_linear(attn.k_proj, rows=_rows(kv_keep, d))
    attn.v_proj = slice_linear(attn.v_proj, rows=_rows(kv_keep, d))
    setattr(attn, p["o"], slice_linear(getattr(attn, p["o"]), cols=_rows(q_keep, d)))
    if hasattr(attn, "num_key_value_groups"):
        attn.num_key_value_groups = per_group[0]
    if hasattr(attn, "num_heads"):
        attn.num_heads = len(q_keep)
    if hasattr(attn, "embed_dim") and n_q == n_kv:
        attn.embed_dim = len(q_keep) * d


def _check_keep(keep: list[int], n: int, what: str) -> None:
    if not keep:
        raise VlapruneError(f"the plan removes every one of the {n} {what} of a layer; keep at least one")
    if sorted(set(keep)) != sorted(keep) or not all(0 <= i < n for i in keep):
        raise VlapruneError(f"invalid {what} to keep: {keep} (layer has {n})")


def coupled_stacks(layout: Layout) -> set[str]:
    """Stacks whose attention runs jointly with another stack's (every stack named by a coupling)."""
    return {n for c in layout.couplings for n in (c.a, c.b)}


def apply_units(layout: Layout, units: dict[str, dict[str, dict[str, list]]], removal: str = "real") -> None:
    """units: {stack: {block index (str): {"ffn": keep, "q": keep, "kv": keep, "bias": [paths]}}};
    validated first. removal: "real" (shrink) or "masked" (zero in place)."""
    if removal not in ("real", "masked"):
        raise VlapruneError(f"--removal={removal!r}; choose real or masked")
    coupled = coupled_stacks(layout)
    for stack, blocks in units.items():
        if stack not in layout.stacks:
            raise VlapruneError(f"no stack {stack!r} (stacks: {', '.join(layout.stacks)})")
        for i, spec in blocks.items():
            if ("q" in spec or "kv" in spec) and stack in coupled:
                n_kv = attn_parts(layout.stacks[stack].blocks[int(i)])["n_kv"]
                if removal == "real" or len(spec.get("kv", range(n_kv))) < n_kv:
                    raise VlapruneError(
                        f"attention heads of {stack!r} cannot be removed: its attention is joint with a "
                        "coupled stack; mask its query heads instead (--removal=masked --heads=query), or "
                        "prune its FFN channels"
                    )
    for stack, blocks in units.items():
        for i, spec in blocks.items():
            block = layout.stacks[stack].blocks[int(i)]
            for path in spec.get("bias", []):
                ensure_bias(block.get_submodule(path))
            if removal == "masked":
                mask_block(block, spec)
                continue
            if "ffn" in spec:
                prune_ffn(block, spec["ffn"])
            if "q" in spec:
                prune_heads(block, spec["q"], spec["kv"])


@torch.no_grad()
def ensure_bias(lin: nn.Linear) -> None:
    """Give `lin` a bias (zeros) if it has none."""
    if lin.bias is None:
        lin.bias = nn.Parameter(
            torch.zeros(lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype),
            requires_grad=lin.weight.requires_grad,
        )


@torch.no_grad()
def _zero(lin: nn.Linear, rows: list[int] | None = None, cols: list[int] | None = None) -> None:
    if rows:
        lin.weight[rows] = 0
        if lin.bias is not None:
            lin.bias[rows] = 0
    if cols:
        lin.weight[:, cols] = 0


def mask_block(block: nn.Module, spec: dict[str, list]) -> None:
    """Zero, in place, every unit of one block that `spec` does not keep (same units as `prune_*`)."""
    if "ffn" in spec:
        mlp, ins, out = ffn_parts(block)
        n = getattr(mlp, ins[0]).out_features
        _check_keep(spec["ffn"], n, "FFN channels")
        gone = sorted(set(range(n)) - set(spec["ffn"]))
        for name in ins:
            _zero(getattr(mlp, name), rows=gone)
        _zero(getattr(mlp, out), cols=gone)
    if "q" in spec:
        p = attn_parts(block)
        a, d, n_q, n_kv = p["attn"], p["head_dim"], p["n_q"], p["n_kv"]
        _check_keep(spec["q"], n_q, "query heads")
        _check_keep(spec["kv"], n_kv, "KV heads")
        q_gone = _rows(sorted(set(range(n_q)) - set(spec["q"])), d)
        kv_gone = _rows(sorted(set(range(n_kv)) - set(spec["kv"])), d)
        _zero(getattr(a, p["o"]), cols=q_gone)
        if p["qkv"]:
            _zero(a.qkv, rows=[part * n_q * d + r for part in range(3) for r in q_gone])
            return
        _zero(a.q_proj, rows=q_gone)
        _zero(a.k_proj, rows=kv_gone)
        _zero(a.v_proj, rows=kv_gone)


def sizes(layout: Layout, stacks: list[str]) -> dict[str, list[dict[str, int]]]:
    """Per stack, per block: FFN width and head counts, as they are now (recorded in plans)."""
    out = {}
    for s in stacks:
        rows = []
        for block in layout.stacks[s].blocks:
            row = {}
            try:
                mlp, ins, _ = ffn_parts(block)
                row["ffn"] = getattr(mlp, ins[0]).out_features
            except VlapruneError:
                pass
            try:
                p = attn_parts(block)
                row |= {"q_heads": p["n_q"], "kv_heads": p["n_kv"]}
            except VlapruneError:
                pass
            rows.append(row)
        out[s] = rows
    return out


def prune_units(
    model: nn.Module,
    units: dict,
    layout: Layout | None = None,
    stacks: str | None = None,
    removal: str = "real",
    spec: list[str] | None = None,
) -> UnitPlan:
    """Apply a unit plan ({stack: {block: {"ffn" | "q" | "kv": kept}}}) to `model` in place and return its
    UnitPlan (with the per-layer sizes afterwards); keep it in the model's PruningRecord. removal: "real"
    or "masked" (see module docstring); spec: the multi-module spec items that chose the units (recorded)."""
    lay = layout or find_layout(model, stacks)
    before = unique_params(model)
    apply_units(lay, units, removal)
    return UnitPlan(
        family=lay.family,
        model_class=type(model).__name__,
        units=units,
        sizes=sizes(lay, list(units)),
        params_before=before,
        params_after=unique_params(model),
        removal=removal,
        spec=list(spec or []),
    )
