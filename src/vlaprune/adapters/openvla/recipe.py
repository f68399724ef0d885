"""OpenVLA-OFT's fine-tuning recipe (its `vla-scripts/finetune.py`, read from the public repository
moojink/openvla-oft; nothing copied), for `vlaprune recover` / `dtr` on an OFT policy.

    trainee = lora(policy)                    # LoRA on the VLA; head + projectors trained fully; rest frozen
    optimizer, scheduler = optimizer(params)  # AdamW 5e-4, x0.1 after 100k steps
    policy = trainee.merge_and_unload()       # the plain OpenVLAPolicy, LoRA merged into the VLA's weights

LoRA, as finetune.py sets it up: peft's `get_peft_model(vla, LoraConfig(r=32, lora_alpha=min(r, 16),
lora_dropout=0.0, target_modules="all-linear", init_lora_weights="gaussian"))` on the whole VLA (finetune.py
wraps the VLA itself, so the vision towers and the projector get adapters too, not only the LLM; peft's
"all-linear" leaves out the LM head). The action head, the proprio projector and (diffusion head) the noisy-
action projector live outside the VLA and are trained fully, as finetune.py builds them; every other weight
is frozen.

Optimizer, as finetune.py: `AdamW(trainable, lr=5e-4)` (torch's defaults otherwise: betas (0.9, 0.999),
weight decay 0.01), `MultiStepLR(milestones=[num_steps_before_decay=100_000], gamma=0.1)` stepped once per
optimizer step, no gradient clipping; its linear warm-up (10% -> 100% of the LR) is off by default
(`lr_warmup_steps=0`), so it is off here too.

Fresh head (`fresh_policy`, `--policy.oft_head=l1|diffusion`): the modules finetune.py builds before it
trains a base OpenVLA, at the checkpoint's LLM width D: `L1RegressionActionHead(input_dim=D, hidden_dim=D,
action_dim)` (2 MLP-ResNet blocks) or `DiffusionActionHead(D, D, action_dim, 50 train steps)` with a
`NoisyActionProjector(D)`, and a `ProprioProjector(D, proprio_dim)`; torch's default initialisation, seeded
(torch.manual_seed(seed) in a forked RNG, so the global RNG is untouched and every load builds the same
head). action_dim / proprio_dim come from the checkpoint's statistics (OFT's LIBERO constants 7 / 8 when it
has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.openvla.head import (
    DiffusionActionHead,
    L1RegressionActionHead,
    NoisyActionProjector,
    ProprioProjector,
)
from vlaprune.adapters.openvla.policy import OpenVLAPolicy, chunk_for
from vlaprune.errors import VlapruneError

# finetune.py's FinetuneConfig defaults
LORA_RANK, LORA_DROPOUT = 32, 0.0
LEARNING_RATE, STEPS_BEFORE_DECAY, DECAY = 5e-4, 100_000, 0.1
DIFFUSION_TRAIN_STEPS = 50  # num_diffusion_steps_train
LIBERO_DIMS = {"action": 7, "proprio": 8}  # prismatic/vla/constants.py, LIBERO
HEADS = ("l1", "diffusion")


def lora_config(r: int | None = None) -> Any:
    """finetune.py's LoraConfig (rank `r`, default 32; alpha min(r, 16))."""
    from peft import LoraConfig

    r = r or LORA_RANK
    return LoraConfig(
        r=r,
        lora_alpha=min(r, 16),
        lora_dropout=LORA_DROPOUT,
        target_modules="all-linear",
        init_lora_weights="gaussian",
    )


def fully_trained(policy: OpenVLAPolicy) -> list[nn.Module]:
    """The modules OFT trains fully beside the LoRA adapters: head and projectors (those present)."""
    mods = (policy.action_head, policy.proprio_projector, policy.noisy_action_projector)
    return [m for m in mods if m is not None]


class OFTLoRA(nn.Module):
    """An OpenVLAPolicy whose VLA carries peft LoRA adapters (see the module docstring); forward(batch) is
    the policy's own OFT loss, (loss, metrics). merge_and_unload() puts the plain VLA back, LoRA merged."""

    def __init__(self, policy: OpenVLAPolicy, r: int | None = None) -> None:
        super().__init__()
        from peft import get_peft_model

        if policy.action_head is None:
            raise VlapruneError(
                "LoRA recovery trains OFT's action head beside the adapters, and this OpenVLA has none; load "
                "an OFT folder with its head file, or add a fresh one with --policy.oft_head=l1|diffusion"
            )
        policy.requires_grad_(False)
        policy.vla = get_peft_model(policy.vla, lora_config(r))  # freezes the VLA's own weights
        for module in fully_trained(policy):
            module.requires_grad_(True)
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy(batch)

    def merge_and_unload(self) -> OpenVLAPolicy:
        self.policy.vla = self.policy.vla.merge_and_unload()
        return self.policy


def lora(policy: nn.Module, r: int | None = None) -> nn.Module:
    return OFTLoRA(policy, r)


def optimizer(params: list[nn.Parameter], lr: float | None = None) -> tuple[Any, Any]:
    """finetune.py's AdamW and MultiStepLR (see the module docstring); `lr` replaces its 5e-4."""
    opt = torch.optim.AdamW(params, lr=lr or LEARNING_RATE)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, [STEPS_BEFORE_DECAY], gamma=DECAY)


def _dims(stats: dict | None) -> dict[str, int]:
    """action / proprio dims from a checkpoint's statistics (its first dataset key), else LIBERO's."""
    first = next(iter((stats or {}).values()), {})
    return {
        k: len(first[k]["q01"]) if isinstance(first.get(k), dict) and "q01" in first[k] else n
        for k, n in LIBERO_DIMS.items()
    }


def fresh_policy(vla: nn.Module, folder: Path | None, kind: str, stats: dict | None, seed: int = 0):
    """`vla` with the head and projectors finetune.py builds for a base OpenVLA (see the module docstring),
    freshly initialised from `seed`."""
    if kind not in HEADS:
        raise VlapruneError(f"--policy.oft_head={kind!r}; choose l1 or diffusion")
    d, dims = vla.config.text_config.hidden_size, _dims(stats)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "l1":
            head, noisy = L1RegressionActionHead(d, d, dims["action"]), None
        else:
            head = DiffusionActionHead(d, d, dims["action"], steps=DIFFUSION_TRAIN_STEPS)
            noisy = NoisyActionProjector(d)
        proprio = ProprioProjector(d, dims["proprio"])
    policy = OpenVLAPolicy(
        vla, action_head=head, proprio_projector=proprio, noisy_action_projector=noisy, chunk=chunk_for(stats)
    )
    policy.folder = folder
    return policy.to(next(vla.parameters()).dtype).eval()
