"""Which blocks a DTR cut removes: the lowest-scoring ones under the architecture's coupling rules (ranked
levels), or the paper's metric-free protocol (drop_half / keep_2). A plan is {stack: [block, ...]} with
coupled partners included; its cost is the total score of every block it removes.
"""

from __future__ import annotations

import itertools
import math

from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError
from vlaprune.surgery.levels import protocol_blocks
from vlaprune.surgery.plan import coupling_errors, expand_couplings, nearest_valid


def _valid(lay: Layout, drops: dict[str, list[int]]) -> bool:
    return not coupling_errors(lay, drops) and all(len(v) < len(lay.stacks[s]) for s, v in drops.items())


def plan_cost(drops: dict[str, list[int]], scores: dict[str, list[float]]) -> float:
    """What a plan removes, by the scores: the sum over every block it drops, coupled partners included
    (stacks without scores count 0)."""
    return sum(scores[s][i] for s, idx in drops.items() if s in scores for i in idx)


def plan_for(
    lay: Layout, component: str, scores: dict[str, list[float]], k: int
) -> dict[str, list[int]] | None:
    """Drop k blocks of `component`, the least important by `scores` ({stack: per-block scores}), under
    the coupling rules.

    Among the valid k-block plans (partners added by coupling; enumerated when there are at most 20000)
    the one that removes the lowest total score wins, partners' scores included (`plan_cost`); otherwise
    the k lowest-scoring blocks, made valid by the nearest valid plan (supersets first). None when no valid
    plan exists."""
    n = len(scores[component])

    def valid(drops: dict[str, list[int]]) -> bool:
        return _valid(lay, drops)

    if math.comb(n, k) <= 20_000:
        best = None
        for combo in itertools.combinations(range(n), k):
            drops = expand_couplings(lay, {component: list(combo)})
            if len(drops.get(component, [])) == k and valid(drops):
                cost = plan_cost(drops, scores)
                if best is None or cost < best[0]:
                    best = (cost, drops)
        if best is not None:
            return best[1]
    order = sorted(range(n), key=lambda i: (plan_cost(expand_couplings(lay, {component: [i]}), scores), i))
    request = {component: sorted(order[:k])}
    drops = expand_couplings(lay, request)
    if valid(drops):
        return drops
    near = nearest_valid(lay, request)
    return near[0] if near else None


def partners(lay: Layout, component: str) -> list[str]:
    """`component` and every stack a drop of one of its blocks takes along (coupling rules)."""
    found = [component]
    for i in range(len(lay.stacks[component])):
        found += expand_couplings(lay, {component: [i]})
    return list(dict.fromkeys(found))


def protocol_plan(lay: Layout, component: str, level: str) -> dict[str, list[int]]:
    """The paper's metric-free cut of `component` (drop_half / keep_2), coupled partners added; raises when
    the architecture's coupling rules cannot keep it as it is."""
    drops = expand_couplings(lay, {component: protocol_blocks(level, len(lay.stacks[component]), component)})
    if not _valid(lay, drops):
        raise VlapruneError(
            f"{level} of {component} breaks this policy's coupling rules "
            f"({'; '.join(coupling_errors(lay, drops)) or 'a stack would be emptied'}); drop it from "
            "--sweep.levels for this component"
        )
    return drops
