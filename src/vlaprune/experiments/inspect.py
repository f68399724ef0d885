"""`vlaprune inspect`: print a policy's anatomy (stacks, params, FLOP share per block, coupling rules) and
write it as JSON.

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
    write_json_atomic(cfg.output, anat)
    print(f"wrote {cfg.output}")
    return anat
