"""Recovery budgets: how many optimizer steps a variant gets.

same_steps     every variant trains as many steps as the baseline, at the same batch (the DTR default)
flops_matched  every variant trains for the same total training FLOPs as the baseline: a smaller model
               gets more steps, steps = round(baseline steps x F_baseline / F_variant), where F is the
               FLOPs of one training step (forward + backward of the policy's loss on one batch, with the
               policy's trainable flags) counted by torch's FlopCounterMode on a real batch (the DTR paper
               gives pi0.5 Drop-16 59.8K steps against the baseline's 30K this way)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlaprune.data import policy_loss
from vlaprune.errors import VlapruneError

BUDGETS = ("same_steps", "flops_matched")


def step_flops(module: nn.Module, batch: dict) -> int:
    """FLOPs of one training step's forward + backward of `module`'s loss on `batch` (its own trainable
    flags decide which parameter gradients are computed). The optimizer update is left out (elementwise,
    negligible next to the matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            loss = policy_loss(module, 0)(0, batch)
            module.train(was_training)
            if loss.requires_grad:
                loss.backward()
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    return int(counter.get_total_flops())


def budget_steps(kind: str, base_steps: int, base_flops: int, variant_flops: int) -> int:
    """Optimizer steps for a variant under budget `kind` (see the module docstring)."""
    if kind not in BUDGETS:
        raise VlapruneError(f"unknown recovery budget {kind!r}; choose one of {', '.join(BUDGETS)}")
    if kind == "same_steps":
        return base_steps
    if base_flops <= 0 or variant_flops <= 0:
        raise VlapruneError("cannot match training FLOPs: a training step counted zero FLOPs")
    return max(1, round(base_steps * base_flops / variant_flops))


def record(kind: str, steps: int, batch_size: int, flops_per_step: int) -> dict[str, Any]:
    """What a measurement row records of its recovery budget."""
    return {
        "kind": kind,
        "steps": steps,
        "batch_size": batch_size,
        "flops_per_step": flops_per_step,
        "training_flops": steps * flops_per_step,
    }
