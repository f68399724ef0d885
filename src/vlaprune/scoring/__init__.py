"""Block importance: one function per method, `method(probe) -> Scores`, higher score = keep.

METHODS is the registry a sweep loops over. `needs_data` methods run the calibration loss.
"""

from __future__ import annotations

from collections.abc import Callable

from vlaprune.scoring import ablation, gateprobe, similarity, static
from vlaprune.scoring.probe import Probe, Scores

METHODS: dict[str, Callable[[Probe], Scores]] = {
    "gateprobe": gateprobe.gateprobe,
    "gateprobe_abs": gateprobe.gateprobe_abs,
    "loo": ablation.loo,
    "greedy": ablation.greedy,
    "block_influence": similarity.block_influence,
    "angular": similarity.angular,
    "magnitude": static.magnitude,
    "random": static.random,
    "position_last": static.position_last,
    "position_first": static.position_first,
}
NEEDS_DATA = {"gateprobe", "gateprobe_abs", "loo", "greedy", "block_influence", "angular"}

__all__ = ["METHODS", "NEEDS_DATA", "Probe", "Scores"]
