"""Which blocks a cut removes, given scores: one rule for `vlaprune drop --drop.from`, the DTR sweep and the
demo, so the same scores and level cut the same blocks everywhere.

    drops = select_blocks(layout, "language", scores, 4, mode="auto")     # or a level: "0.5", "drop_half"

Whole blocks: among the valid k-block plans of the stacks asked for (coupled partners added; enumerated when
there are at most 20000) the one that removes the lowest total score wins, partners' scores included
(`plan_cost`), so a plan never takes along a partner that matters more than the blocks it spares. That is
the k lowest-scoring blocks whenever they form a valid plan without partners (keep-K/V language drops,
action-only expert drops). Sublayer drops (attention- or MLP-only) keep every block in place and take the k
lowest by that sublayer's scores. Metric-free levels (drop_half / keep_2) ignore the scores. A plan is
{stack: [block, ...]} with coupled partners included.
"""

from __future__ import annotations

import itertools
import math

from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError
from vlaprune.surgery.levels import PROTOCOL_LEVELS, level_count, protocol_blocks
from vlaprune.surgery.plan import coupling_errors, expand_couplings, nearest_valid

Drops = dict[str, list[int]]
ENUMERATE_UP_TO = 20_000


def in_place(lay: Layout, component: str, mode: str) -> bool:
    """Whether a drop of `component` leaves its blocks in place (modes "auto" / "keep_kv" on SmolVLA / pi0 /
    pi0.5: keep-K/V language drops, action-only expert drops): then it takes no partner along and no
    coupling rule applies."""
    return mode != "pair" and (component in lay.keep_kv or component in lay.skip_in_place)


def _expand(lay: Layout, request: Drops, mode: str) -> Drops:
    """The request with every block a drop takes along (none for in-place drops)."""
    out: dict[str, set[int]] = {}
    for name, idx in request.items():
        part = {name: list(idx)} if in_place(lay, name, mode) else expand_couplings(lay, {name: list(idx)})
        for s, j in part.items():
            out.setdefault(s, set()).update(j)
    return {s: sorted(j) for s, j in out.items()}


def _valid(lay: Layout, drops: Drops, mode: str = "pair", asked: tuple[str, ...] = ()) -> bool:
    """Every stack keeps a full block and its read-out block; whole-block drops also obey the coupling
    rules (kv-only layers and
    skipped expert blocks stay at their index, so the in-place drops of the stacks `asked` for change no
    coupling)."""
    if any(len(v) >= len(lay.stacks[s]) for s, v in drops.items()):
        return False
    if any((r := lay.stacks[s].readout) is not None and r.index in v for s, v in drops.items()):
        return False  # the block the model reads stays (surgery refuses to drop it)
    rest = {s: v for s, v in drops.items() if not (s in asked and in_place(lay, s, mode))}
    return not rest or not coupling_errors(lay, rest)


def plan_cost(drops: dict[str, list[int]], scores: dict[str, list[float]]) -> float:
    """What a plan removes, by the scores: the sum over every block it drops, coupled partners included
    (stacks without scores count 0)."""
    return sum(scores[s][i] for s, idx in drops.items() if s in scores for i in idx)


def _grouped(blocks: list[tuple[str, int]]) -> Drops:
    out: Drops = {}
    for s, i in sorted(blocks):
        out.setdefault(s, []).append(i)
    return out


def select_blocks(
    lay: Layout,
    stacks: str | list[str],
    scores: dict[str, list[float]],
    k: int | str,
    mode: str = "auto",
    part: str = "block",
) -> Drops | None:
    """The blocks to drop: `k` of `stacks` (one stack, or several ranked together), the least important by
    `scores` ({stack: per-block scores}; for part "attn" / "mlp" that sublayer's own scores), under the
    coupling rules of `mode` (the surgery's drop mode) -- see the module docstring. `k` may be a level of
    a single stack ("0.5" of its blocks, "4", or the metric-free drop_half / keep_2). None when no valid
    plan exists."""
    names = [stacks] if isinstance(stacks, str) else list(stacks)
    if isinstance(k, str):
        (name,) = names
        n = len(lay.stacks[name])
        if k in PROTOCOL_LEVELS and part != "block":
            return {name: protocol_blocks(k, n, name)}
        if k in PROTOCOL_LEVELS:
            return protocol_plan(lay, name, k, mode)
        k = level_count(k, n)
    blocks = [(s, i) for s in names for i in range(len(scores[s]))]
    if part != "block":  # sublayer drops take no partners: the k lowest
        return _grouped(sorted(blocks, key=lambda b: (scores[b[0]][b[1]], b))[:k])
    asked = tuple(names)

    def valid(drops: Drops) -> bool:
        return _valid(lay, drops, mode, asked)

    def size(drops: Drops) -> int:
        return sum(len(drops.get(s, [])) for s in names)

    if math.comb(len(blocks), k) <= ENUMERATE_UP_TO:
        best = None
        for combo in itertools.combinations(blocks, k):
            drops = _expand(lay, _grouped(list(combo)), mode)
            if size(drops) == k and valid(drops):
                cost = plan_cost(drops, scores)
                if best is None or cost < best[0]:
                    best = (cost, drops)
        if best is not None:
            return best[1]
    order = sorted(blocks, key=lambda b: (plan_cost(_expand(lay, {b[0]: [b[1]]}, mode), scores), b))
    request = _grouped(order[:k])
    drops = _expand(lay, request, mode)
    if valid(drops):
        return drops
    near = nearest_valid(lay, request)
    return near[0] if near else None


def stacks_of(lay: Layout, component: str) -> list[str]:
    """The stacks a sweep component names: one stack by its name ("language", "vision.dino"), or every stack
    of a component that has several ("vision" on OpenVLA-OFT: both towers, cut together as `--drop.vision`
    cuts them, the paper's "drop half vision"); [] when it names none."""
    if component in lay.stacks:
        return [component]
    return [n for n, s in lay.stacks.items() if s.component == component]


def n_blocks(lay: Layout, component: str) -> int:
    """Blocks of a sweep component (summed over its stacks)."""
    return sum(len(lay.stacks[s]) for s in stacks_of(lay, component))


def check_component(lay: Layout, component: str) -> None:
    if not stacks_of(lay, component):
        groups = sorted({s.component for n, s in lay.stacks.items() if n != s.component})
        also = f" (or {', '.join(groups)}: all its stacks)" if groups else ""
        raise VlapruneError(f"unknown component {component!r}; this policy has {', '.join(lay.stacks)}{also}")


def partners(lay: Layout, component: str, mode: str = "auto") -> list[str]:
    """The stacks of `component` and every stack a drop of one of their blocks takes along (coupling
    rules)."""
    found = stacks_of(lay, component)
    for name in list(found):
        for i in range(len(lay.stacks[name])):
            found += _expand(lay, {name: [i]}, mode)
    return list(dict.fromkeys(found))


def protocol_plan(lay: Layout, component: str, level: str, mode: str = "auto") -> dict[str, list[int]]:
    """The paper's metric-free cut of `component` (drop_half / keep_2), coupled partners added (not for
    in-place drops: keep-K/V language, action-only expert); raises when the architecture's coupling rules
    cannot keep it as it is."""
    stack = lay.stacks[component]
    blocks = protocol_blocks(level, len(stack), component, stack.readout.index if stack.readout else None)
    drops = _expand(lay, {component: blocks}, mode)
    if not _valid(lay, drops, mode, (component,)):
        raise VlapruneError(
            f"{level} of {component} breaks this policy's coupling rules "
            f"({'; '.join(coupling_errors(lay, drops)) or 'a stack would be emptied'}); drop it from "
            "--sweep.levels for this component"
        )
    return drops


def choices(
    lay: Layout, c: str, level: str, part: str, mode: str, *, scores: dict, sub_scores: dict
) -> tuple[int, list[tuple[str, Drops | None]]]:
    """(blocks the level removes, [(method or "protocol", plan)]) for one component, level and part: the DTR
    sweep's options, each by `select_blocks`. A component of several stacks (`stacks_of`: OFT's "vision")
    cuts each of them by a protocol level (each tower by its own read-out rule, as `--drop.vision`), and
    ranks their blocks together for a ranked level (a fraction of all their blocks)."""
    names, n = stacks_of(lay, c), n_blocks(lay, c)
    if level in PROTOCOL_LEVELS:  # metric-free: one plan, whatever the scores
        drops: Drops = {}
        for name in names:
            for s, idx in select_blocks(lay, name, {}, level, mode, part).items():
                drops[s] = sorted(set(drops.get(s, [])) | set(idx))
        return sum(len(drops.get(s, [])) for s in names), [("protocol", drops)]
    k = level_count(level, n)
    if part == "block":
        if not 0 < k < n:
            return k, []
        return k, [(m, select_blocks(lay, names, sc, k, mode)) for m, sc in scores.items()]
    return k, [(m, select_blocks(lay, names, sc[part], k, mode, part)) for m, sc in sub_scores.items()]
