"""One dataclass per stage, parsed from lerobot-style flags (`--policy.path=...`) by draccus."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PolicyConfig:
    # A checkpoint folder, a hub id (org/name), or a built-in tiny model (tiny:smolvla, tiny:pi0, ...).
    path: str = "tiny:smolvla"
    # Allow transformers remote code (OpenVLA / Prismatic checkpoints ship their modeling code).
    trust_remote_code: bool = False
    # Where the model runs: cpu, cuda, cuda:N, mps. Empty: where it loads (lerobot checkpoints: their
    # config's device, or the best available one; built-in tiny models: cpu).
    device: str = ""


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
            raise ValueError("--output must be a file path")
