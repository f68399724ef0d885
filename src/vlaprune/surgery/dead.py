"""Dead compute: the parts of a policy whose output nothing reads, found from the Layout and removed for free.

  language stacks another stack reads K/V from (SmolVLA / pi0 / pi0.5): the policy never reads the language
      stream's final hidden state, only each block's keys / values. With r the last block whose K/V a live
      expert block reads, block r's own residual update (q / o projections, post-attention norm, MLP) and
      every block after r feed nothing the policy reads: block r becomes kv-only, blocks after it keep
      nothing (keep-K/V drops, `surgery.blocks`).
  stacks read below their top (Prismatic's vision towers read block depth-2): the blocks after the read-out
      block run but nothing reads them; they go whole.
The cut model's actions are bit-identical to the uncut model's (tested per family). Scores of dead parts
say nothing about importance (their gradients and weight changes are 0 by construction), so scoring
reports them as dead instead of ranking them as free to cut (`dead_blocks`).
"""

from __future__ import annotations

from typing import Any

from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.adapters.skipped import is_skipped
from vlaprune.adapters.stack import Layout


def dead_blocks(layout: Layout) -> dict[str, dict[str, list[int]]]:
    """Per stack with dead compute: {"update": blocks whose residual update is dead (K/V still read),
    "whole": blocks entirely dead}. Blocks already cut (kv-only, skipped) are left out."""
    out: dict[str, dict[str, list[int]]] = {}
    for name, spec in layout.keep_kv.items():
        blocks = layout.stacks[name].blocks
        read = [i for i, r in enumerate(spec.read) if r]
        if not read:
            continue
        last = read[-1]
        found = {
            "update": [last] if not is_kv_only(blocks[last]) else [],
            "whole": [i for i in range(last + 1, len(blocks)) if not is_kv_only(blocks[i])],
        }
        if found["update"] or found["whole"]:
            out[name] = found
    for name, stack in layout.stacks.items():
        if stack.readout is not None and stack.readout.index + 1 < len(stack):
            whole = [i for i in range(stack.readout.index + 1, len(stack)) if not is_skipped(stack.blocks[i])]
            if whole:
                out[name] = {"update": [], "whole": whole}
    return out


def dead_request(layout: Layout) -> dict[str, list[int]]:
    """The drop request that removes the dead compute under mode "auto" (keep-K/V for language blocks, whole
    blocks after a read-out)."""
    return {n: sorted(d["update"] + d["whole"]) for n, d in dead_blocks(layout).items()}


def describe(layout: Layout) -> list[dict[str, Any]]:
    """One row per stack with dead compute: what is dead and why (`vlaprune inspect`)."""
    rows = []
    for name, d in dead_blocks(layout).items():
        why = []
        if d["update"]:
            why.append(
                f"block {d['update'][0]}: only its K/V are read, its attention output and MLP feed nothing"
            )
        if d["whole"]:
            reason = (
                "after the read-out block"
                if layout.stacks[name].readout is not None
                else "no block reads them"
            )
            why.append(f"blocks {d['whole']}: {reason}")
        rows.append({"stack": name, "update": d["update"], "whole": d["whole"], "why": "; ".join(why)})
    return rows
