"""The multi-module unit spec: per module, criterion, direction, ratio, scope and protected blocks.

    --spec="language.mlp=dw_openvla:high:0.2:global:protect=0-4,30,31 vision.mlp=dw:low:0.1"

Items are separated by spaces or ';'. An item is MODULE=CRITERION[:FIELD...]:
  MODULE      STACK.mlp (FFN channels) or STACK.attn (attention heads), STACK a stack of the policy
              (`vlaprune inspect` lists them: language, vision, action, ...)
  CRITERION   a unit criterion (`vlaprune.scoring.units.CRITERIA`: magnitude, wanda, taylor, flap, random,
              dw, dw_openvla, dw_pi05)
  then, in any order after the criterion:
  high | low  remove the units with the highest / lowest criterion value (default low; for dW criteria
              high = the most-moved units, low = the least-moved)
  RATIO       the fraction of units to remove, in [0, 1) (required)
  layer | global
              rank within each block (default) or across all the stack's unprotected blocks
  protect=L   blocks never touched, e.g. protect=0-4,30,31 (0-based, inclusive ranges)
The paper's public-code recipes are written this way, e.g. OpenVLA's
`language.mlp=dw_openvla:high:0.2:global:protect=0-4,30,31 vision.mlp=dw_openvla:low:0.1:global`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from vlaprune.errors import VlapruneError
from vlaprune.surgery.ratios import DIRECTIONS, KINDS, SCOPES, Module

HOW = "STACK.mlp|attn=CRITERION[:high|low]:RATIO[:layer|global][:protect=0-4,30]"


def parse_spec(
    spec: str, depths: dict[str, int], criteria: Sequence[str], legacy: Mapping[str, tuple[str, str]] = {}
) -> list[Module]:
    """Modules of a spec string. depths: {stack: number of blocks} of the policy (validates names and
    protected indices); criteria: the criterion names accepted (`vlaprune.scoring.units.CRITERIA`); legacy:
    old names that fix a direction, {name: (criterion, direction)}. Raises VlapruneError (one line) on
    anything it cannot read."""
    modules: list[Module] = []
    for item in filter(None, re.split(r"[\s;]+", spec.strip())):
        modules.append(_item(item, depths, criteria, legacy))
    keys = [m.key for m in modules]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise VlapruneError(f"--spec names {dup[0]}.{dup[1]} twice; one item per module")
    if not modules:
        raise VlapruneError(f"--spec is empty; give items like {HOW}")
    return modules


def _item(item: str, depths: dict[str, int], criteria: Sequence[str], legacy: Mapping) -> Module:
    key, eq, rest = item.partition("=")
    stack, _, kind = key.rpartition(".")
    if not eq or not rest:
        raise VlapruneError(f"--spec item {item!r} is not {HOW}")
    if kind not in KINDS:
        raise VlapruneError(f"--spec item {item!r}: unknown unit kind {kind!r}; use STACK.mlp or STACK.attn")
    if stack not in depths:
        raise VlapruneError(f"--spec item {item!r}: no stack {stack!r} (stacks: {', '.join(depths)})")
    crit, *fields = rest.split(":")
    if crit not in criteria:
        raise VlapruneError(
            f"--spec item {item!r}: unknown criterion {crit!r}; choose from {', '.join(criteria)}"
        )
    crit, direction = legacy.get(crit, (crit, "low"))
    ratio, scope, protect = None, "layer", ()
    for f in fields:
        if f in DIRECTIONS:
            direction = f
        elif f in SCOPES:
            scope = f
        elif f.startswith("protect="):
            protect = _protect(f[len("protect=") :], depths[stack], item)
        else:
            try:
                ratio = float(f)
            except ValueError:
                raise VlapruneError(
                    f"--spec item {item!r}: unknown field {f!r} (a direction high|low, a ratio, a scope "
                    "layer|global or protect=LIST)"
                ) from None
    if ratio is None:
        raise VlapruneError(f"--spec item {item!r} has no ratio; e.g. {key}={crit}:0.2")
    if not 0 <= ratio < 1:
        raise VlapruneError(f"--spec item {item!r}: ratio {ratio} must be in [0, 1)")
    return Module(stack, kind, ratio, crit, direction, scope, protect)


def _protect(text: str, depth: int, item: str) -> tuple[int, ...]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        a, dash, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if dash else int(a)
        except ValueError:
            raise VlapruneError(
                f"--spec item {item!r}: protect={text!r} is not a list like 0-4,30,31"
            ) from None
        if not 0 <= lo <= hi < depth:
            raise VlapruneError(
                f"--spec item {item!r}: protected blocks {part} out of range "
                f"(the stack has blocks 0-{depth - 1})"
            )
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def label(m: Module) -> str:
    """The spec item that reproduces `m` (recorded in plans and reports)."""
    s = f"{m.stack}.{m.kind}={m.criterion}:{m.direction}:{m.ratio:g}:{m.scope}"
    if m.protect:
        s += ":protect=" + ",".join(map(str, m.protect))
    return s
