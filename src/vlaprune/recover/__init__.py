"""Recovery: fine-tune a (pruned or unpruned) policy under a fixed budget (full, LoRA, distillation)."""
