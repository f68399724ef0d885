"""`BlockPlan` / `UnitPlan` record one surgery and `PruningRecord` all of a model's; `resolve_drops` turns a
request into a plan that respects the couplings.

Coupling rules enforced (from the adapters' `Coupling` records):
  lockstep (pi0 / pi0.5)  the two stacks keep the same depth: dropping block i of either drops it in both.
  paired (SmolVLA)        a dropped block's partner goes too (expert block j <-> VLM block pairs[j]); then,
                          after renumbering, (1) the VLM depth is a multiple of the expert depth m', (2) every
                          kept expert block still runs with its own VLM partner (new index j' pairs with new
                          VLM index m'*j'), and (3) every kept block keeps its attention kind: self-attention
                          iff new index % period == 0 (SmolVLA alternates self / cross every `period` blocks).
A plan that breaks (1)-(3) is refused with the nearest valid plans (fewest blocks added or kept back).

Drop modes (`MODES`):
  auto     (default) each component is cut alone, as the DTR paper cuts joint-attention VLAs: language blocks
           of SmolVLA / pi0 / pi0.5 keep their K/V for the expert (keep-K/V, `Layout.keep_kv`), action-expert
           blocks go alone while every language block stays (action-only, `Layout.skip_in_place`); whole
           blocks everywhere else.
  keep_kv  the same, but refused when a requested stack is neither keep-K/V-capable nor a reader (vision, a
           plain transformers LM): nothing there attends to the dropped blocks' K/V.
  pair     whole blocks only, coupled partners included (vlaprune's behaviour before keep-K/V).
Keep-K/V and action-only drops leave the block at its index (a kv-only layer, or a pass-through
`SkippedBlock`), so no coupling rule concerns them: partner indices and attention kinds stay as they are.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.adapters.skipped import is_skipped
from vlaprune.adapters.stack import Coupling, Layout
from vlaprune.errors import VlapruneError

MODES = ("auto", "keep_kv", "pair")


@dataclass
class BlockPlan:
    """What a block drop removed. Indices are those of the model the plan was applied to (0-based).

    drops: per stack, every block removed whole (partners included); requested: what was asked for;
    coupled: what the coupling rules added. component_params_*: parameters per component before / after.
    mode: "keep_kv" when blocks were turned into kv-only layers, "sublayer" for a sublayer drop, else "pair"
    (plans saved before keep-K/V existed read as "pair"). part: "block", or "attn" / "mlp" for a sublayer
    drop (`surgery.sublayers`) of the blocks in `sublayers` (whole_attention: per stack, whether the whole
    attention module went or only its output projection). kv_only: per stack, the blocks kept as K/V only
    (indices before the plan; they stay in the stack); kv_params: the parameters each of them kept (input
    norm + k/v projections). skipped: per stack, the blocks removed by an action-only drop (pass-throughs at
    their index; their partners stay). mode: "keep_kv", "action_only" or "keep_kv+action_only" for in-place
    drops."""

    family: str
    model_class: str
    drops: dict[str, list[int]]
    requested: dict[str, list[int]]
    coupled: dict[str, list[int]]
    blocks_before: dict[str, int]
    blocks_after: dict[str, int]
    params_before: int = 0
    params_after: int = 0
    component_params_before: dict[str, int] = field(default_factory=dict)
    component_params_after: dict[str, int] = field(default_factory=dict)
    kind: str = "blocks"
    mode: str = "pair"
    kv_only: dict[str, list[int]] = field(default_factory=dict)
    kv_params: dict[str, list[int]] = field(default_factory=dict)
    part: str = "block"
    sublayers: dict[str, list[int]] = field(default_factory=dict)
    whole_attention: dict[str, bool] = field(default_factory=dict)
    skipped: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        for s, idx in self.sublayers.items():
            if self.part == "mlp":
                what = "MLP removed (its norm stays)"
            elif self.whole_attention.get(s):
                what = "attention removed (q/k/v/o projections and the attention itself)"
            else:
                what = "attention output projection removed (q/k/v stay: the joint attention computes them)"
            parts.append(f"{s}: {self.part}-only drop {idx}, {what}")
        for s, idx in self.drops.items():
            if idx:
                extra = f" (+{self.coupled[s]} by coupling)" if self.coupled.get(s) else ""
                parts.append(
                    f"{s}: drop {idx}{extra}, {self.blocks_before[s]} -> {self.blocks_after[s]} blocks"
                )
        for s, idx in self.kv_only.items():
            kept = [
                f"{s} {i}: kept input norm + k/v projections ({n:,} params)"
                if n
                else f"{s} {i}: nothing kept (no block reads its K/V)"
                for i, n in zip(idx, self.kv_params.get(s, [0] * len(idx)), strict=True)
            ]
            removed = "q/o projections, post-attention norm and MLP removed"
            parts.append(f"{s}: keep-K/V drop {idx}, {removed} ({'; '.join(kept)})")
        for s, idx in self.skipped.items():
            parts.append(f"{s}: action-only drop {idx}, whole blocks removed, their partner blocks kept")
        return "; ".join(parts) + _params(self.params_before, self.params_after)


@dataclass
class UnitPlan:
    """What a unit pruning removed: per stack, per block (index as a string), the units kept,
    {"ffn": channels, "q": query heads, "kv": KV heads}; `sizes`: each block's widths afterwards."""

    family: str
    model_class: str
    units: dict[str, dict[str, dict[str, list[int]]]]
    sizes: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    kind: str = "units"
    # "real" (layers shrank) or "masked" (units zeroed in place, shapes and parameter count unchanged)
    removal: str = "real"
    # the multi-module spec items that chose the units (surgery.spec.label), when a spec did
    spec: list[str] = field(default_factory=list)
    # per module: ratio, asked / possible / removed units (surgery.ratios.accounting), when ratios chose them
    asked: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        how = "masked (zeroed, shapes kept)" if self.removal == "masked" else "pruned"
        return ", ".join(f"{s}: {len(b)} blocks {how}" for s, b in self.units.items()) + _params(
            self.params_before, self.params_after
        )


@dataclass
class WidthPlan:
    """What a width cut removed (`surgery.width`): the hidden stream of the MLP-ResNet holding `stack` (OFT's
    action head) keeps channels `kept` (ascending) of `width_before`, chosen by `criterion`."""

    family: str
    model_class: str
    stack: str
    kept: list[int]
    width_before: int
    criterion: str = "magnitude"
    params_before: int = 0
    params_after: int = 0
    kind: str = "width"

    def summary(self) -> str:
        head = f"{self.stack}: hidden width {self.width_before} -> {len(self.kept)} (by {self.criterion})"
        return head + _params(self.params_before, self.params_after)


Plan = BlockPlan | UnitPlan | WidthPlan


def _params(before: int, after: int) -> str:
    pct = 100 * (before - after) / before if before else 0
    return f"; params {before:,} -> {after:,} (-{pct:.1f}%)"


def asked_vs_removed(plan: BlockPlan) -> dict[str, dict[str, list[int]]]:
    """Per stack: the blocks asked for and what happened to them (removed whole, kept as K/V only, removed
    in place by an action-only drop, one sublayer removed), plus the blocks the coupling rules added; saved in
    plan.json beside the plan."""
    out = {}
    for s in sorted({*plan.requested, *plan.drops, *plan.kv_only, *plan.skipped, *plan.sublayers}):
        asked = plan.requested.get(s, [])
        out[s] = {
            "asked": asked,
            "removed_whole": plan.drops.get(s, []),
            "kept_kv_only": plan.kv_only.get(s, []),
            "removed_action_only": plan.skipped.get(s, []),
            f"{plan.part}_only_removed": plan.sublayers.get(s, []),
            "added_by_coupling": plan.coupled.get(s, []),
        }
        if plan.part == "block":
            del out[s]["block_only_removed"]
    return out


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    d = asdict(plan)
    if isinstance(plan, BlockPlan):  # derived, for readers of plan.json; plan_from_dict ignores it
        d["asked_vs_removed"] = asked_vs_removed(plan)
    return d


def plan_from_dict(d: dict[str, Any]) -> Plan:
    """A plan from its JSON (also reads the single-class format of vlaprune 0.1 checkpoints)."""
    d = dict(d)
    extra = d.pop("extra", None) or {}
    if d.get("kind") == "width":
        return WidthPlan(**{k: v for k, v in d.items() if k in {f.name for f in fields(WidthPlan)}})
    if d.get("kind") == "units":
        return UnitPlan(
            family=d["family"],
            model_class=d["model_class"],
            units=d["units"],
            sizes=d.get("sizes") or extra.get("sizes", {}),
            params_before=d.get("params_before", 0),
            params_after=d.get("params_after", 0),
            removal=d.get("removal", "real"),
            spec=d.get("spec", []),
            asked=d.get("asked", {}),
        )
    names = {f.name for f in fields(BlockPlan)}
    d = {k: v for k, v in d.items() if k in names}
    d.setdefault("component_params_before", extra.get("component_params_before", {}))
    d.setdefault("component_params_after", extra.get("component_params_after", {}))
    return BlockPlan(**d)


@dataclass
class PruningRecord:
    """A pruned model's history, kept beside the model (never as attributes on it) and saved as plan.json.

    base: how to rebuild the unpruned architecture ({"kind": "lerobot" | "transformers" | "source", ...}),
        None when it cannot be rebuilt (the model can then not be saved as a pruned checkpoint).
    stacks: the --stacks spec the plans' stack names refer to (None: the family adapter's names).
    plans: every surgery applied, in order.
    trained_on: the episodes each recovery trained this model on,
        [{"dataset": repo id, "episodes": [...]}, ...] (None: never fine-tuned by vlaprune);
        evaluation refuses to call these episodes held out.
    """

    base: dict[str, Any] | None
    stacks: str | None = None
    plans: list[Plan] = field(default_factory=list)
    trained_on: list[dict[str, Any]] | None = None


def normalize(layout: Layout, request: dict[str, list[int]]) -> dict[str, list[int]]:
    """Check names, indices, duplicates; map component names to their single stack."""
    out: dict[str, list[int]] = {}
    for key, idx in request.items():
        if key in layout.stacks:
            name = key
        else:
            named = [n for n, s in layout.stacks.items() if s.component == key]
            if len(named) != 1:
                have = ", ".join(layout.stacks)
                raise VlapruneError(
                    f"no stack {key!r} in this model (stacks: {have})"
                    if not named
                    else f"component {key!r} has several stacks ({', '.join(named)}); name one of them"
                )
            name = named[0]
        n = len(layout.stacks[name])
        idx = [int(i) for i in idx]
        dup = sorted({i for i in idx if idx.count(i) > 1})
        if dup:
            raise VlapruneError(f"{name}: block(s) {dup} listed twice; list each block once")
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise VlapruneError(f"{name}: block index {bad} out of range; {name} has blocks 0..{n - 1}")
        out[name] = sorted(set(out.get(name, [])) | set(idx))
    return out


def expand_couplings(layout: Layout, drops: dict[str, list[int]]) -> dict[str, list[int]]:
    """Add the partner of every dropped block (lockstep: same index; paired: via `pairs`)."""
    out = {k: set(v) for k, v in drops.items()}
    for c in layout.couplings:
        a, b = out.setdefault(c.a, set()), out.setdefault(c.b, set())
        if c.kind == "lockstep":
            both = a | b
            out[c.a], out[c.b] = set(both), set(both)
        elif c.kind == "paired":
            partner_of_a = {p: j for j, p in enumerate(c.pairs)}
            b |= {partner_of_a[i] for i in a if i in partner_of_a}
            a |= {c.pairs[j] for j in b}
    return {k: sorted(v) for k, v in out.items() if v}


def coupling_errors(layout: Layout, drops: dict[str, list[int]]) -> list[str]:
    """Why `drops` (already expanded) breaks a coupling rule; empty when valid."""
    errors = []
    for name, idx in drops.items():
        if len(idx) >= len(layout.stacks[name]):
            errors.append(f"{name}: dropping all {len(layout.stacks[name])} blocks leaves an empty stack")
    for c in layout.couplings:
        if c.kind == "paired":
            errors += _paired_errors(layout, c, drops)
    return errors


def _kind(i: int, period: int) -> str:
    return "self-attn" if period <= 0 or i % period == 0 else "cross-attn"


def _paired_errors(layout: Layout, c: Coupling, drops: dict[str, list[int]]) -> list[str]:
    na, nb = len(layout.stacks[c.a]), len(layout.stacks[c.b])
    keep_a = [i for i in range(na) if i not in drops.get(c.a, [])]
    keep_b = [j for j in range(nb) if j not in drops.get(c.b, [])]
    if not keep_a or not keep_b:
        return []
    if len(keep_a) % len(keep_b):
        return [f"{c.a} would keep {len(keep_a)} blocks and {c.b} {len(keep_b)}: not a multiple"]
    m = len(keep_a) // len(keep_b)
    new_a = {old: new for new, old in enumerate(keep_a)}
    errors = []
    for new_j, j in enumerate(keep_b):
        if new_a.get(c.pairs[j]) != m * new_j:
            errors.append(f"{c.b} block {j} would lose its partner ({c.a} block {c.pairs[j]})")
    if c.period > 0:
        for stack, keep in ((c.a, keep_a), (c.b, keep_b)):
            for new, old in enumerate(keep):
                if _kind(old, c.period) != _kind(new, c.period):
                    errors.append(
                        f"{stack} block {old} would become block {new} and switch from "
                        f"{_kind(old, c.period)} to {_kind(new, c.period)}"
                    )
    return errors


def nearest_valid(layout: Layout, requested: dict[str, list[int]], max_changes: int = 3) -> list[dict]:
    """Valid plans closest to `requested` (fewest blocks toggled, preferring additions), at most 3."""
    coupled = {n for c in layout.couplings for n in (c.a, c.b)} | set(requested)
    candidates = [(n, i) for n in layout.stacks if n in coupled for i in range(len(layout.stacks[n]))]
    for k in range(1, max_changes + 1):
        found = []
        for toggles in itertools.combinations(candidates, k):
            trial = {n: set(v) for n, v in requested.items()}
            for n, i in toggles:
                trial.setdefault(n, set()).symmetric_difference_update({i})
            plan = expand_couplings(layout, {n: sorted(v) for n, v in trial.items() if v})
            if plan and not coupling_errors(layout, plan) and plan not in found:
                found.append(plan)
        if found:
            superset = [p for p in found if all(set(v) <= set(p.get(n, [])) for n, v in requested.items())]
            return (superset + [p for p in found if p not in superset])[:3]
    return []


def _split_mode(layout: Layout, requested: dict[str, list[int]], mode: str) -> tuple[dict, dict, dict]:
    """(blocks to drop whole, blocks to keep as K/V only, blocks to skip in place) of a normalized request
    under `mode`."""
    if mode not in MODES:
        raise VlapruneError(f"drop mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "pair":
        return requested, {}, {}
    if mode == "keep_kv":
        readers = {k.reader for k in layout.keep_kv.values()}
        bad = [n for n in requested if n not in layout.keep_kv and n not in readers]
        if bad:
            where = f" ({', '.join(layout.keep_kv)} of this model)" if layout.keep_kv else ""
            raise VlapruneError(
                f"keep-K/V drop of {bad[0]}: no other stack attends to its keys / values (keep-K/V applies "
                f"to the language blocks of joint-attention policies{where}); drop whole blocks with "
                "--drop.mode=pair"
            )
    in_place = set(layout.keep_kv) | set(layout.skip_in_place)
    whole = {n: v for n, v in requested.items() if n not in in_place}
    kv = {n: v for n, v in requested.items() if n in layout.keep_kv}
    return whole, kv, {n: v for n, v in requested.items() if n in layout.skip_in_place}


def _refuse_repeated(layout: Layout, kv: dict, skip: dict) -> None:
    for name, idx in kv.items():
        if already := [i for i in idx if is_kv_only(layout.stacks[name].blocks[i])]:
            raise VlapruneError(
                f"{name}: block(s) {already} already keep only their K/V (an earlier keep-K/V drop); "
                "remove them whole with --drop.mode=pair"
            )
    for name, idx in skip.items():
        if already := [i for i in idx if is_skipped(layout.stacks[name].blocks[i])]:
            raise VlapruneError(
                f"{name}: block(s) {already} were already removed (an earlier action-only drop); leave them "
                "out of the request"
            )


def resolve_drops(layout: Layout, request: dict[str, list[int]], mode: str = "auto") -> tuple[dict, ...]:
    """(requested, final whole-block drops, added by coupling, kept as K/V only, skipped in place) for a
    request under `mode` (see the module docstring); raises, touching nothing, with the nearest valid plans.
    """
    requested = normalize(layout, request)
    whole, kv, skip = _split_mode(layout, requested, mode)
    _refuse_repeated(layout, kv, skip)
    drops = expand_couplings(layout, whole)
    kv_only: dict[str, list[int]] = {}
    for name, idx in kv.items():
        gone = set(drops.get(name, []))  # its reader partner goes whole, so it goes whole with it
        if rest := [i for i in idx if i not in gone]:
            kv_only[name] = rest
    asked_first = sorted(layout.stacks.items(), key=lambda kv: kv[0] not in requested)  # name what was asked
    for name, stack in asked_first:
        k = stack.readout.index if stack.readout is not None else None
        if k is not None and k in drops.get(name, []):
            raise VlapruneError(
                f"{name}: block {k} is the block the model reads (its features feed the projector; later "
                f"blocks are unused), so dropping it would silently feed another block; keep block {k} "
                f"(blocks 0..{k - 1} and {k + 1}.. can go)"
            )
        gone = set(drops.get(name, [])) | set(kv_only.get(name, [])) | set(skip.get(name, []))
        left = [i for i in range(len(stack)) if i not in gone and not _in_place(stack.blocks[i])]
        if gone and not left:
            n_kv = sum(map(is_kv_only, stack.blocks)) + len(kv_only.get(name, []))
            kept = f" ({n_kv} kept as K/V only)" if n_kv else ""
            raise VlapruneError(
                f"{name}: the plan drops all {len(stack)} blocks of the stack{kept}; keep at least one "
                f"full block (the model needs every stack)"
            )
    errors = coupling_errors(layout, drops)
    if errors:
        near = nearest_valid(layout, whole)
        fmt = lambda p: " ".join(f"--drop.{n}={','.join(map(str, v))}" for n, v in p.items())  # noqa: E731
        hint = "nearest valid plans: " + " | ".join(fmt(p) for p in near) if near else "no valid plan nearby"
        rules = "; ".join(c.rule for c in layout.couplings)
        raise VlapruneError(
            f"plan {fmt(drops)} breaks the coupling rules ({errors[0]}); {hint}. Rules: {rules}"
        )
    coupled = {n: sorted(set(v) - set(requested.get(n, []))) for n, v in drops.items()}
    return requested, drops, {n: v for n, v in coupled.items() if v}, kv_only, skip


def _in_place(block: object) -> bool:
    return is_kv_only(block) or is_skipped(block)
