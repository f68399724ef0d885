"""Surgery: remove blocks and units for real, and save / load the smaller model with its PruningRecord."""

from vlaprune.surgery.blocks import drop_blocks
from vlaprune.surgery.checkpoint import load_pruned, save_pruned
from vlaprune.surgery.plan import BlockPlan, PruningRecord, UnitPlan
from vlaprune.surgery.sublayers import drop_sublayers
from vlaprune.surgery.units import prune_units

__all__ = [
    "BlockPlan",
    "PruningRecord",
    "UnitPlan",
    "drop_blocks",
    "drop_sublayers",
    "load_pruned",
    "prune_units",
    "save_pruned",
]
