"""Which units go: per-module ratios applied to unit scores (the `--budget` search that chooses ratios is
part of the prune-units protocol, `vlaprune.experiments.prune_units`).

Scores come from `vlaprune.scoring.units` (higher = keep); a ratio r removes the round(r * n) lowest-scoring
units of every block of a stack, FFN channels (`mlp`) or attention heads (`attn`: whole KV groups, or query
heads inside each group).
"""

from __future__ import annotations

import torch

from vlaprune.errors import VlapruneError

KINDS = {"mlp": {"ffn"}, "attn": {"q", "kv"}}


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


def select(scores: dict, ratios: dict[tuple[str, str], float], heads: str = "groups") -> dict:
    """Units to keep per block: the highest-scoring (1 - ratio) of each kind, in original order."""
    units: dict[str, dict[str, dict[str, list[int]]]] = {}
    for stack, blocks in scores.items():
        for i, sc in enumerate(blocks):
            spec: dict[str, list[int]] = {}
            r = ratios.get((stack, "mlp"), 0.0)
            if r > 0:
                spec["ffn"] = _top(sc["ffn"], round(r * len(sc["ffn"])), f"{stack} block {i} FFN channels")
            r = ratios.get((stack, "attn"), 0.0)
            if r > 0:
                spec |= _heads(sc["q"], sc["kv"], r, heads, f"{stack} block {i}")
            if spec:
                units.setdefault(stack, {})[str(i)] = spec
    return units


def _top(score: torch.Tensor, remove: int, what: str) -> list[int]:
    n = len(score)
    if remove >= n:
        raise VlapruneError(f"the ratio removes all {n} {what}; use a smaller ratio")
    keep = torch.argsort(score, descending=True, stable=True)[: n - remove]
    return sorted(int(i) for i in keep)


def _heads(q: torch.Tensor, kv: torch.Tensor, r: float, mode: str, where: str) -> dict[str, list[int]]:
    n_q, n_kv = len(q), len(kv)
    g = n_q // n_kv
    if mode == "groups" or g == 1:
        group_score = q.reshape(n_kv, g).sum(1) + kv
        kv_keep = _top(group_score, round(r * n_kv), f"{where} KV groups")
        return {"q": [k * g + j for k in kv_keep for j in range(g)], "kv": kv_keep}
    if mode != "query":
        raise VlapruneError(f"--heads={mode!r}; choose groups or query")
    q_keep = []
    for k in range(n_kv):
        q_keep += [
            k * g + j for j in _top(q[k * g : (k + 1) * g], round(r * g), f"{where} query heads of a group")
        ]
    return {"q": q_keep, "kv": list(range(n_kv))}
