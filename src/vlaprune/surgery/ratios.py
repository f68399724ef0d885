"""Which units go: per-module ratios applied to unit scores (the multi-module spec that names them is
`vlaprune.surgery.spec`; the `--budget` search that chooses ratios is part of the prune-units protocol).

Scores come from `vlaprune.scoring.units` (higher = keep). A module is one stack's FFN channels (`mlp`) or
attention heads (`attn`: whole KV groups, or query heads inside each group). Its ratio r is applied in one of
two scopes:
  layer   every block alike: the round(r * n) lowest-scoring units of each block go (vlaprune's default);
  global  the divergence paper's public code: the units of all unprotected blocks are ranked together and
          the int(r * total) lowest go, so blocks lose different numbers of units.
Protected blocks are never touched (and, globally, not ranked). Every block keeps at least one unit (or a
one-line error); grouped-query attention stays valid: globally ranked heads are whole KV groups under
`heads=groups`; under `heads=query` a block's count is spread evenly over its KV groups (round(c / n_kv)
per group, exact with one KV head as in Gemma / PaliGemma).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlaprune.errors import VlapruneError

KINDS = {"mlp": {"ffn"}, "attn": {"q", "kv"}}
SCOPES = ("layer", "global")
DIRECTIONS = ("low", "high")  # remove the lowest / the highest criterion values


@dataclass(frozen=True)
class Module:
    """One module of a unit cut: which units (stack, kind), by what (criterion, direction), how many."""

    stack: str
    kind: str  # "mlp" | "attn"
    ratio: float
    criterion: str = ""
    direction: str = "low"
    scope: str = "layer"
    protect: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.stack, self.kind


def parse_ratios(spec: str, stacks: dict) -> dict[tuple[str, str], float]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, eq, val = item.partition("=")
        name, _, kind = key.strip().rpartition(".")
        if not eq or kind not in KINDS or not name:
            raise VlapruneError(
                f"--ratios item {item!r} is not STACK.mlp=R or STACK.attn=R (e.g. language.mlp=0.3)"
            )
        if name not in stacks:
            raise VlapruneError(f"--ratios: no stack {name!r} (stacks: {', '.join(stacks)})")
        try:
            r = float(val)
        except ValueError:
            raise VlapruneError(f"--ratios {key}={val!r}: not a number") from None
        if not 0 <= r < 1:
            raise VlapruneError(f"--ratios {key}={r}: a ratio must be in [0, 1)")
        out[(name, kind)] = r
    return out


def select(
    scores: dict, modules: dict[tuple[str, str], float] | list[Module], heads: str = "groups"
) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Units to keep per block, {stack: {block: {"ffn" | "q" | "kv": kept, in original order}}}.
    modules: Module records, or {(stack, kind): ratio} (layer scope, nothing protected)."""
    if isinstance(modules, dict):
        modules = [Module(s, k, r) for (s, k), r in modules.items()]
    units: dict[str, dict[str, dict[str, list[int]]]] = {}
    for m in modules:
        if m.ratio <= 0:
            continue
        blocks = scores[m.stack]
        if m.kind == "mlp":
            picked = _select_ffn(blocks, m)
        else:
            picked = _select_heads(blocks, m, heads)
        for i, spec in picked.items():
            units.setdefault(m.stack, {}).setdefault(str(i), {}).update(spec)
    return units


def accounting(scores: dict, modules: list[Module], units: dict) -> dict[str, dict]:
    """Per module (STACK.mlp | STACK.attn): what the ratio asked for and what `units` removes, in FFN channels
    or query heads. asked = ratio x the module's units; possible = the units of its unprotected blocks;
    removed = what goes (per-block rounding, whole KV groups and protected blocks can make it smaller)."""
    out = {}
    for m in modules:
        key = "ffn" if m.kind == "mlp" else "q"
        sizes = [len(b.get(key, ())) for b in scores[m.stack]]
        kept = units.get(m.stack, {})
        removed = sum(n - len(kept[str(i)][key]) for i, n in enumerate(sizes) if key in kept.get(str(i), {}))
        out[f"{m.stack}.{m.kind}"] = {
            "ratio": m.ratio,
            "unit": "FFN channels" if m.kind == "mlp" else "query heads",
            "asked": round(m.ratio * sum(sizes), 2),
            "possible": sum(n for i, n in enumerate(sizes) if i not in m.protect),
            "removed": removed,
        }
    return out


def shortfall(acc: dict[str, dict]) -> list[str]:
    """One line per module that lost fewer units than asked (at least one unit less)."""
    return [
        f"{name}: asked {a['ratio']:g} x {a['unit']} = {a['asked']:g}, removed {a['removed']} "
        f"(of {a['possible']} in unprotected blocks; per-block rounding or whole KV groups)"
        for name, a in acc.items()
        if a["asked"] - a["removed"] >= 1 or (a["asked"] > 0 and a["removed"] == 0)
    ]


def _open(blocks: list, m: Module) -> list[int]:
    """The blocks a module may cut: not protected, and with units of its kind (kv-only blocks have none)."""
    key = "ffn" if m.kind == "mlp" else "q"
    return [i for i in range(len(blocks)) if i not in m.protect and key in blocks[i]]


def _select_ffn(blocks: list[dict], m: Module) -> dict[int, dict[str, list[int]]]:
    idx = _open(blocks, m)
    if m.scope == "layer":
        counts = {i: round(m.ratio * len(blocks[i]["ffn"])) for i in idx}
    else:
        counts = _global_counts({i: blocks[i]["ffn"] for i in idx}, m.ratio)
    return {
        i: {"ffn": _top(blocks[i]["ffn"], c, f"{m.stack} block {i} FFN channels", m.scope)}
        for i, c in counts.items()
        if c > 0
    }


def _global_counts(per_block: dict[int, torch.Tensor], ratio: float) -> dict[int, int]:
    """How many units each block loses when all blocks' units are ranked together and int(ratio * total)
    of the lowest go. Ties go round-robin over the blocks (a stack whose scores are all equal, e.g. an
    encoder adaptation did not move, loses units evenly instead of its first blocks whole)."""
    if not per_block:
        return {}
    owner = torch.cat([torch.full((len(v),), i) for i, v in per_block.items()])
    flat = torch.cat([v.double() for v in per_block.values()])
    order = torch.argsort(torch.cat([torch.arange(len(v)) for v in per_block.values()]), stable=True)
    order = order[torch.argsort(flat[order], stable=True)]
    gone = owner[order[: int(len(flat) * ratio + 1e-9)]]  # + 1e-9: 4/n * n is 3.999... in floats
    return {i: int((gone == i).sum()) for i in per_block}


def _select_heads(blocks: list[dict], m: Module, mode: str) -> dict[int, dict[str, list[int]]]:
    idx = _open(blocks, m)
    if mode not in ("groups", "query"):
        raise VlapruneError(f"--heads={mode!r}; choose groups or query")
    out = {}
    if m.scope == "layer":
        for i in idx:
            spec = _heads(blocks[i]["q"], blocks[i]["kv"], m.ratio, mode, f"{m.stack} block {i}")
            if len(spec["q"]) < len(blocks[i]["q"]):
                out[i] = spec
        return out
    grouped = {i: _group_view(blocks[i], mode) for i in idx}
    counts = _global_counts({i: g[0] for i, g in grouped.items()}, m.ratio)
    for i, c in counts.items():
        if c == 0:
            continue
        q, kv = blocks[i]["q"], blocks[i]["kv"]
        n_q, n_kv = len(q), len(kv)
        g = n_q // n_kv
        where = f"{m.stack} block {i}"
        if grouped[i][1]:  # whole groups
            kv_keep = _top(grouped[i][0], c, f"{where} KV groups", "global")
            out[i] = {"q": [k * g + j for k in kv_keep for j in range(g)], "kv": kv_keep}
        else:
            per = round(c / n_kv)
            if per == 0:
                continue
            keep = []
            for k in range(n_kv):
                group = q[k * g : (k + 1) * g]
                keep += [k * g + j for j in _top(group, per, f"{where} query heads", "global")]
            out[i] = {"q": keep, "kv": list(range(n_kv))}
    return out


def _group_view(sc: dict, mode: str) -> tuple[torch.Tensor, bool]:
    """The scores globally ranked for one block's heads: KV-group scores (whole groups) or query heads."""
    q, kv = sc["q"], sc["kv"]
    g = len(q) // len(kv)
    if mode == "groups" or g == 1:
        return q.reshape(len(kv), g).sum(1) + kv, True
    return q, False


def _top(score: torch.Tensor, remove: int, what: str, scope: str = "layer") -> list[int]:
    n = len(score)
    if remove >= n:
        how = "global ranking" if scope == "global" else "the ratio"
        raise VlapruneError(
            f"{how} removes all {n} {what}; use a smaller ratio"
            + (" or protect that block" if scope == "global" else "")
        )
    keep = torch.argsort(score, descending=True, stable=True)[: n - remove]
    return sorted(int(i) for i in keep)


def _heads(q: torch.Tensor, kv: torch.Tensor, r: float, mode: str, where: str) -> dict[str, list[int]]:
    n_q, n_kv = len(q), len(kv)
    g = n_q // n_kv
    if mode == "groups" or g == 1:
        group_score = q.reshape(n_kv, g).sum(1) + kv
        kv_keep = _top(group_score, round(r * n_kv), f"{where} KV groups")
        return {"q": [k * g + j for k in kv_keep for j in range(g)], "kv": kv_keep}
    q_keep = []
    for k in range(n_kv):
        q_keep += [
            k * g + j for j in _top(q[k * g : (k + 1) * g], round(r * g), f"{where} query heads of a group")
        ]
    return {"q": q_keep, "kv": list(range(n_kv))}
