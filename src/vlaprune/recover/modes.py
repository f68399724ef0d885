"""What is trained: the policy itself (full), LoRA adapters on it (peft: the family's own recipe, e.g.
OpenVLA-OFT's finetune.py in `adapters.openvla.recipe`, else lerobot's own `wrap_with_peft`), or the policy
distilled from its unpruned teacher.

Distillation: the student's loss is  alpha * (its own loss)
  + (1 - alpha) * MSE(student action output, teacher action output)  [+ beta * MSE of the final expert
  hidden states]
on the same batch, with the same noise and time samples for both (the RNG is replayed for the teacher). The
action output is the output of the module the adapter names (`Layout.action_out`): SmolVLA, pi0, pi0.5:
`action_out_proj`, the flow model's velocity, next to a flow-matching loss; OpenVLA-OFT: the action head's
MLP-ResNet, i.e. with the L1 head the predicted normalized action chunk (B, chunk, A) next to OFT's L1 loss
(the match is MSE, not L1), with the diffusion head the predicted noise next to its noise MSE.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from vlaprune.adapters import family_of, layout
from vlaprune.errors import VlapruneError

MODES = ("full", "lora", "distill")
LEROBOT_LORA_RANK = 16


def wrap_lora(policy: nn.Module, r: int | None, source: str) -> nn.Module:
    """LoRA adapters (peft): the family's own recipe where it has one (`Family.recipe`; OpenVLA-OFT: OFT's
    finetune.py, rank 32 on the VLA's linear layers, head and projectors trained fully), else lerobot's
    `wrap_with_peft` on the policy's default targets (`_get_default_peft_targets`), rank r (default 16).
    r: None for the recipe's own rank."""
    fam = family_of(policy)
    if fam is not None and fam.recipe is not None:
        return fam.recipe.lora(policy, r)
    if not hasattr(policy, "wrap_with_peft"):
        raise VlapruneError(
            "LoRA mode needs a lerobot policy (it uses lerobot's wrap_with_peft) or an OpenVLA-OFT policy"
        )
    if not getattr(policy.config, "pretrained_path", None):
        policy.config.pretrained_path = source  # lerobot refuses LoRA on a policy "trained from scratch"
    try:
        return policy.wrap_with_peft(peft_cli_overrides={"method_type": "lora", "r": r or LEROBOT_LORA_RANK})
    except ValueError as e:
        raise VlapruneError(f"cannot add LoRA adapters to this policy: {e}") from None


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain policy with the LoRA weights merged in (for saving / evaluation)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def rng_state() -> tuple:
    """The CPU generator's state and, once CUDA is initialised, every CUDA device's (flow-matching noise and
    time samples come from the generator of the device the policy runs on)."""
    live = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if live else None)


def set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _capture(module: nn.Module, store: list) -> Any:
    h = module.register_forward_hook(lambda m, a, o: store.append(o))
    try:
        yield
    finally:
        h.remove()


class Distill(nn.Module):
    """Wraps a student so that `forward(batch) -> (loss, info)` is the distillation loss (lerobot's update
    step calls exactly that). The teacher is held outside the module tree: not trained, not saved."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, alpha: float = 0.5, hidden_weight: float = 0.0
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise VlapruneError(f"--distill_alpha={alpha}: must be in [0, 1]")
        self.student = student
        self._teacher = [teacher.eval().requires_grad_(False)]
        self.alpha, self.hidden_weight = alpha, hidden_weight
        lays = [layout(m) for m in (student, teacher)]
        if any(lay.action_out is None for lay in lays):
            raise VlapruneError(
                "distillation needs the policy's action output (SmolVLA / pi0 / pi0.5 policies, OpenVLA-OFT "
                "with its action head)"
            )
        self._out = [m.get_submodule(lay.action_out) for m, lay in zip((student, teacher), lays)]
        self._exits = [
            m.get_submodule(lay.stacks["action"].exit)
            if "action" in lay.stacks and lay.stacks["action"].exit
            else None
            for m, lay in zip((student, teacher), lays)
        ]

    @property
    def config(self):
        return self.student.config

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        teacher = self._teacher[0]
        s_v, t_v, s_h, t_h = [], [], [], []
        rng = rng_state()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_capture(self._out[0], s_v))
            if self.hidden_weight:
                stack.enter_context(_capture(self._exits[0], s_h))
            task_loss, info = self.student.forward(batch)
        after = rng_state()
        set_rng_state(rng)  # the teacher sees the same noise and time samples (CPU and CUDA generators)
        with torch.no_grad(), contextlib.ExitStack() as stack:
            stack.enter_context(_capture(self._out[1], t_v))
            if self.hidden_weight:
                stack.enter_context(_capture(self._exits[1], t_h))
            teacher.forward(dict(batch))
        set_rng_state(after)
        match = torch.nn.functional.mse_loss(s_v[-1], t_v[-1])
        loss = self.alpha * task_loss + (1 - self.alpha) * match
        info = dict(info or {}, task_loss=task_loss.item(), match_loss=match.item())
        if self.hidden_weight:
            hidden = torch.nn.functional.mse_loss(s_h[-1], t_h[-1])
            loss = loss + self.hidden_weight * hidden
            info["hidden_loss"] = hidden.item()
        return loss, info
