"""The anatomy of a model: its stacks, each block's parameters and share of a forward pass's FLOPs, and
the coupling rules between stacks (`vlaprune inspect` prints it: `vlaprune.experiments.inspect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from vlaprune.adapters.counting import count_flops, unique_params
from vlaprune.adapters.stack import Layout

OTHER = "other"


def _parts(layout: Layout) -> dict[str, list[tuple[str, nn.Module]]]:
    out: dict[str, list[tuple[str, nn.Module]]] = {}
    for comp, paths in layout.parts.items():
        for p in paths:
            try:
                mod = layout.model.get_submodule(p)
            except AttributeError:
                continue  # e.g. pi0.5 has no state_proj
            if mod is not None and any(True for _ in mod.parameters()):
                out.setdefault(comp, []).append((p, mod))
    return out


def _pct(x: float | None, of: float | None) -> float | None:
    return None if x is None or not of else round(100.0 * x / of, 3)


def _count_flops(layout: Layout, parts: dict[str, list[tuple[str, nn.Module]]]) -> dict[Any, int]:
    """FLOPs of one `layout.forward` in eval mode, keyed (stack, block index), ("part", component) or None."""
    model = layout.model
    regions: dict[nn.Module, Any] = {}
    for c, mods in parts.items():
        regions.update({m: ("part", c) for _, m in mods})
    for n, s in layout.stacks.items():
        regions.update({b: (n, i) for i, b in enumerate(s.blocks)})
    was_training = model.training
    model.eval()
    try:
        return count_flops(model, layout.forward, regions)
    finally:
        model.train(was_training)


@dataclass
class _Counts:
    """Parameter counts (each tensor once) and FLOPs (None when not counted) of one layout."""

    total: int
    block_params: dict[str, list[int]]
    part_params: dict[str, int]
    fl: dict[Any, int] | None

    @property
    def total_flops(self) -> int | None:
        return sum(self.fl.values()) if self.fl else None

    def flops(self, key: Any) -> int | None:
        return self.fl.get(key, 0) if self.fl is not None else None


def _stack_rows(layout: Layout, n: _Counts) -> list[dict[str, Any]]:
    """One row per stack: its place, block count, parameters and FLOPs (total and per block), coupling."""
    couplings: dict[str, list[str]] = {}
    for c in layout.couplings:
        couplings.setdefault(c.a, []).append(f"{c.kind} with {c.b}")
        couplings.setdefault(c.b, []).append(f"{c.kind} with {c.a}")
    rows = []
    for name, s in layout.stacks.items():
        bf = [n.flops((name, i)) for i in range(len(s))] if n.fl is not None else None
        params = sum(n.block_params[name])
        rows.append(
            {
                "name": name,
                "component": s.component,
                "path": s.path,
                "blocks": len(s),
                "params": params,
                "params_pct": _pct(params, n.total),
                "flops": sum(bf) if bf is not None else None,
                "flops_pct": _pct(sum(bf), n.total_flops) if bf is not None else None,
                "block_params": n.block_params[name],
                "block_flops": bf,
                "block_notes": s.notes,
                "counters": [c.where + "." + c.attr for c in s.counters],
                "coupling": "; ".join(couplings.get(name, [])),
            }
        )
    return rows


def _part_rows(parts: dict[str, list[tuple[str, nn.Module]]], n: _Counts) -> list[dict[str, Any]]:
    """One row per non-block part (embeddings, projectors, heads): its modules, parameters and FLOPs."""
    return [
        {
            "component": c,
            "modules": [p for p, _ in mods],
            "params": n.part_params[c],
            "params_pct": _pct(n.part_params[c], n.total),
            "flops": n.flops(("part", c)),
            "flops_pct": _pct(n.flops(("part", c)), n.total_flops),
        }
        for c, mods in parts.items()
    ]


def anatomy(layout: Layout, flops: bool = True) -> dict[str, Any]:
    """Parameters and FLOPs per block of every stack, per non-block part, and the rest ("other").

    Parameters are counted once each (tied weights once), so stacks + parts + other = sum(p.numel()).
    FLOPs: see `vlaprune.adapters.counting.count_flops` for how ops are attributed to blocks."""
    model = layout.model
    seen: set[int] = set()
    block_params = {n: [unique_params(b, seen) for b in s.blocks] for n, s in layout.stacks.items()}
    parts = _parts(layout)
    part_params = {c: sum(unique_params(m, seen) for _, m in mods) for c, mods in parts.items()}
    fl = _count_flops(layout, parts) if flops and layout.forward is not None else None
    n = _Counts(unique_params(model), block_params, part_params, fl)
    other_params = n.total - sum(map(sum, block_params.values())) - sum(part_params.values())
    return {
        "family": layout.family,
        "model_class": type(model).__name__,
        "total_params": n.total,
        "total_flops": n.total_flops,
        "flops_pass": layout.forward_desc if fl is not None else None,
        "stacks": _stack_rows(layout, n),
        "parts": _part_rows(parts, n),
        OTHER: {
            "params": other_params,
            "params_pct": _pct(other_params, n.total),
            "flops": n.flops(None),
            "flops_pct": _pct(n.flops(None), n.total_flops),
        },
        "couplings": [
            {"kind": c.kind, "a": c.a, "b": c.b, "pairs": c.pairs, "rule": c.rule} for c in layout.couplings
        ],
    }


def table(anat: dict[str, Any]):
    """A rich Table: component, blocks, params, % params, % FLOPs, coupling."""
    from rich.table import Table

    def num(x: int | None) -> str:
        if x is None:
            return "-"
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(x) >= div:
                return f"{x / div:.2f}{unit}"
        return str(x)

    def p(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    title = f"{anat['model_class']} ({anat['family']}): {num(anat['total_params'])} params"
    if anat["total_flops"]:
        title += f", {num(anat['total_flops'])} FLOPs per {anat['flops_pass']}"
    t = Table(title=title, title_justify="left")
    for col, just in [
        ("stack", "left"),
        ("blocks", "right"),
        ("params", "right"),
        ("% params", "right"),
        ("% FLOPs", "right"),
        ("coupling", "left"),
    ]:
        t.add_column(col, justify=just, overflow="fold")
    for s in anat["stacks"]:
        t.add_row(
            s["name"],
            str(s["blocks"]),
            num(s["params"]),
            p(s["params_pct"]),
            p(s["flops_pct"]),
            s["coupling"],
        )
    for r in anat["parts"]:
        t.add_row(
            f"{r['component']} (non-block)", "-", num(r["params"]), p(r["params_pct"]), p(r["flops_pct"]), ""
        )
    o = anat[OTHER]
    t.add_row("other", "-", num(o["params"]), p(o["params_pct"]), p(o["flops_pct"]), "")
    return t
