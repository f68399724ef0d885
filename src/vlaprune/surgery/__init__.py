"""Surgery: remove blocks (and later units) for real, and save / load the smaller model."""

from vlaprune.surgery.blocks import drop_blocks
from vlaprune.surgery.checkpoint import load, save_pruned
from vlaprune.surgery.plan import Plan

__all__ = ["Plan", "drop_blocks", "load", "save_pruned"]
