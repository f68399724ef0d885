"""Which blocks a DTR cut removes: the lowest-scoring ones under the architecture's coupling rules (ranked
levels), or the paper's metric-free protocol (drop_half / keep_2). A plan is {stack: [block, ...]} with
coupled partners included; its cost is the total score of every block it removes. Sublayer plans
(attention- or MLP-only drops) name the blocks that lose that sublayer and take no partners.
"""

from __future__ import annotations

import itertools
import math

from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError
from vlaprune.surgery.levels import PROTOCOL_LEVELS, level_count, protocol_blocks
from vlaprune.surgery.plan import coupling_errors, expand_couplings, nearest_valid


def in_place(lay: Layout, component: str, mode: str) -> bool:
    """Whether a drop of `component` leaves its blocks in place (modes "auto" / "keep_kv" on SmolVLA / pi0 /
    pi0.5: keep-K/V language drops, action-only expert drops): then it takes no partner along and no
    coupling rule applies."""
    return mode != "pair" and (component in lay.keep_kv or component in lay.skip_in_place)


def _expand(lay: Layout, request: dict[str, list[int]], mode: str) -> dict[str, list[int]]:
    (component,) = request
    return dict(request) if in_place(lay, component, mode) else expand_couplings(lay, request)


def _valid(lay: Layout, drops: dict[str, list[int]], mode: str = "pair") -> bool:
    """Every stack keeps a full block; whole-block drops also obey the coupling rules (kv-only layers and
    skipped expert blocks stay at their index, so in-place drops change no coupling)."""
    if any(len(v) >= len(lay.stacks[s]) for s, v in drops.items()):
        return False
    return (len(drops) == 1 and in_place(lay, next(iter(drops)), mode)) or not coupling_errors(lay, drops)


def plan_cost(drops: dict[str, list[int]], scores: dict[str, list[float]]) -> float:
    """What a plan removes, by the scores: the sum over every block it drops, coupled partners included
    (stacks without scores count 0)."""
    return sum(scores[s][i] for s, idx in drops.items() if s in scores for i in idx)


def plan_for(
    lay: Layout, component: str, scores: dict[str, list[float]], k: int, mode: str = "auto"
) -> dict[str, list[int]] | None:
    """Drop k blocks of `component`, the least important by `scores` ({stack: per-block scores}), under
    the coupling rules (`mode`: the surgery's drop mode; in-place drops take no partners).

    Among the valid k-block plans (partners added by coupling; enumerated when there are at most 20000)
    the one that removes the lowest total score wins, partners' scores included (`plan_cost`); otherwise
    the k lowest-scoring blocks, made valid by the nearest valid plan (supersets first). None when no valid
    plan exists."""
    n = len(scores[component])

    def valid(drops: dict[str, list[int]]) -> bool:
        return _valid(lay, drops, mode)

    if math.comb(n, k) <= 20_000:
        best = None
        for combo in itertools.combinations(range(n), k):
            drops = _expand(lay, {component: list(combo)}, mode)
            if len(drops.get(component, [])) == k and valid(drops):
                cost = plan_cost(drops, scores)
                if best is None or cost < best[0]:
                    best = (cost, drops)
        if best is not None:
            return best[1]
    order = sorted(range(n), key=lambda i: (plan_cost(_expand(lay, {component: [i]}, mode), scores), i))
    request = {component: sorted(order[:k])}
    drops = _expand(lay, request, mode)
    if valid(drops):
        return drops
    near = nearest_valid(lay, request)
    return near[0] if near else None


def partners(lay: Layout, component: str, mode: str = "auto") -> list[str]:
    """`component` and every stack a drop of one of its blocks takes along (coupling rules)."""
    found = [component]
    for i in range(len(lay.stacks[component])):
        found += _expand(lay, {component: [i]}, mode)
    return list(dict.fromkeys(found))


def protocol_plan(lay: Layout, component: str, level: str, mode: str = "auto") -> dict[str, list[int]]:
    """The paper's metric-free cut of `component` (drop_half / keep_2), coupled partners added (not for
    in-place drops: keep-K/V language, action-only expert); raises when the architecture's coupling rules
    cannot keep it as it is."""
    stack = lay.stacks[component]
    blocks = protocol_blocks(level, len(stack), component, stack.readout.index if stack.readout else None)
    drops = _expand(lay, {component: blocks}, mode)
    if not _valid(lay, drops, mode):
        raise VlapruneError(
            f"{level} of {component} breaks this policy's coupling rules "
            f"({'; '.join(coupling_errors(lay, drops)) or 'a stack would be emptied'}); drop it from "
            "--sweep.levels for this component"
        )
    return drops


def choices(
    lay: Layout, c: str, level: str, part: str, mode: str, scores: dict, sub_scores: dict
) -> tuple[int, list[tuple[str, dict | None]]]:
    """(blocks the level removes, [(method or "protocol", plan)]) for one component, level and part. Whole
    blocks follow the coupling rules (`plans.py`); a sublayer drop keeps every block in place, so its plan
    is just the blocks whose attention / MLP goes: the protocol's, or the k lowest by that sublayer's
    scores."""
    n = len(lay.stacks[c])
    if level in PROTOCOL_LEVELS:  # metric-free: one plan, whatever the scores
        drops = protocol_plan(lay, c, level, mode) if part == "block" else {c: protocol_blocks(level, n, c)}
        return len(drops[c]), [("protocol", drops)]
    k = level_count(level, n)
    if part == "block":
        if not 0 < k < n:
            return k, []
        return k, [(m, plan_for(lay, c, sc, k, mode)) for m, sc in scores.items()]
    ranked = {m: sorted(range(n), key=lambda i, s=sc[part][c]: (s[i], i)) for m, sc in sub_scores.items()}
    return k, [(m, {c: sorted(order[:k])}) for m, order in ranked.items()]
