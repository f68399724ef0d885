"""`vlaprune demo`: the main job on its embedded default, no GPU and no downloads.

Today it prints the anatomy of a built-in tiny lerobot SmolVLA (random weights, the real class) and writes
it to `<output_dir>/anatomy.json`. The full Drop-Then-Recovery demo (trained MetaWorld policy, sweep,
report) replaces it when the protocol lands (see README, "Status").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlaprune.adapters import anatomy
from vlaprune.configs import InspectConfig, PolicyConfig


@dataclass
class DemoConfig:
    # Where the demo writes its results.
    output_dir: str = "vlaprune-demo"
    # The built-in policy it runs on.
    policy: str = "tiny:smolvla"


def parse(args: list[str]) -> DemoConfig:
    import draccus

    return draccus.parse(DemoConfig, args=args)


def run(cfg: DemoConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir) / "anatomy.json"
    return anatomy.run(InspectConfig(policy=PolicyConfig(path=cfg.policy), output=str(out)))
