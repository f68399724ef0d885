"""Evaluation: what a (pruned) policy costs and how well it still acts."""
