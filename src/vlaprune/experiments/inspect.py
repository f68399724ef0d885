"""`vlaprune inspect`: print a policy's anatomy (stacks, params, FLOP share per block, coupling rules, dead
compute) and write it as JSON.

    vlaprune inspect --policy.path=PATH_OR_HUB_ID [--stacks=language=model.layers,...] [--output=anatomy.json]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlaprune.adapters.anatomy import anatomy, table
from vlaprune.atomic import write_json_atomic
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy
from vlaprune.surgery.dead import dead_request, describe


@dataclass
class InspectConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # Name the stacks yourself: "language=model.layers,vision=vision_tower.blocks" or a preset ("openvla").
    # Empty: the adapter finds them (lerobot SmolVLA / pi0 / pi0.5, transformers models).
    stacks: str = ""
    # Where the anatomy JSON goes.
    output: str = "anatomy.json"
    # Count FLOPs with one representative forward pass (set false to skip on very large models).
    flops: bool = True

    def __post_init__(self) -> None:
        if not self.output:
            raise VlapruneError("--output must be a file path")


def run(cfg: InspectConfig) -> dict[str, Any]:
    """Load, find the stacks, measure, print the table and write the JSON."""
    from rich.console import Console

    policy = load_policy(cfg.policy, cfg.stacks or None)
    anat = anatomy(policy.layout(), flops=cfg.flops)
    anat["source"] = cfg.policy.path
    anat["random_weights"] = policy.random_weights
    console = Console(width=max(Console().width, 110))
    console.print(table(anat))
    for c in anat["couplings"]:
        console.print(f"coupling {c['a']} / {c['b']}: {c['rule']}")
    for s in anat["stacks"]:  # Prismatic's vision towers: the projector reads block depth-2
        read = [i for i, note in enumerate(s["block_notes"]) if note == "read by the projector"]
        if read:
            console.print(
                f"{s['name']}: the projector reads block {read[0]}; later blocks run but are unused"
            )
    anat["dead"] = _dead(policy, anat, cfg.flops)
    for row in anat["dead"]:
        flops = "" if row["flops_chunk"] is None else f", {row['flops_chunk']:,} FLOPs per action chunk"
        console.print(
            f"dead compute in {row['stack']}: {row['why']} ({row['params']:,} params{flops}); "
            "`vlaprune drop --drop.dead=true` removes it with identical actions",
            markup=False,
        )
    write_json_atomic(cfg.output, anat)
    print(f"wrote {cfg.output}")
    return anat


def _dead(policy: Any, anat: dict[str, Any], flops: bool) -> list[dict[str, Any]]:
    """The dead compute (`surgery.dead`) with what removing it saves, measured by removing it from this
    loaded instance (inspect writes no model) and counting again: params and FLOPs per action chunk."""
    rows = describe(policy.layout())
    if not rows:
        return []
    before = anat["total_params"], anat["total_flops"]
    per_stack = {}
    for row in rows:  # one stack at a time, so each row says what its own dead part costs
        policy.drop_blocks({row["stack"]: sorted(row["update"] + row["whole"])})
        after = anatomy(policy.layout(), flops=flops)
        per_stack[row["stack"]] = (before[0] - after["total_params"], _minus(before[1], after["total_flops"]))
        before = after["total_params"], after["total_flops"]
    assert not dead_request(policy.layout())  # nothing dead is left
    return [{**r, "params": per_stack[r["stack"]][0], "flops_chunk": per_stack[r["stack"]][1]} for r in rows]


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b
