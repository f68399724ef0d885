"""Skipped blocks: what stays of an action-expert block that an action-only drop removes.

In SmolVLA, pi0 and pi0.5 the action expert runs block by block beside the VLM. The DTR paper cuts each
component alone: dropping expert block j leaves every VLM block in place, the expert's tokens skip that layer
(h_out = h_in, its whole residual update gone) and every remaining expert block keeps the VLM partner and the
attention kind it had. The dropped block becomes a `SkippedBlock` at the same index: no parameters, no
compute, and the stack keeps its depth, so partner indices, attention kinds (SmolVLA's self / cross
alternation) and KV-cache layer indices stay as they are.

The families' joint forwards learn to pass such blocks through the same instance-level overrides that run
kv-only language layers (`keep_kv_smolvla.install`, `keep_kv_pi.install`). Where lerobot's own code calls
the block's forward (pi0 / pi0.5's denoising steps run the expert as a GemmaModel), `SkippedBlock.forward`
returns its input. This is exactly the GateProbe gate of that block at 0 (`scoring.gates.update_gates`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn


class SkippedBlock(nn.Module):
    """A removed expert block at its old index: no parameters, `forward(h, ...) -> h`.

    layer_idx: the KV-cache index the block had (kept so the stack's other blocks keep theirs).
    `self_attn.q_proj.weight` is an empty non-persistent buffer that follows the model's dtype and device:
    lerobot's PiGemmaModel reads `layers[0].self_attn.q_proj.weight.dtype` to pick bf16. Nothing of the
    block is saved in a state dict."""

    skipped = True

    def __init__(self, layer_idx: int | None = None, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.register_buffer("weight", torch.empty(0, dtype=dtype, device=device), persistent=False)

    @property
    def self_attn(self) -> SimpleNamespace:
        return SimpleNamespace(q_proj=SimpleNamespace(weight=self.weight), layer_idx=self.layer_idx)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, removed by an action-only drop"


def is_skipped(block: nn.Module | None) -> bool:
    return isinstance(block, SkippedBlock)


def make_skipped(block: nn.Module) -> SkippedBlock:
    attn = getattr(block, "self_attn", None)
    ref = next(block.parameters(), None)
    dtype, device = (ref.dtype, ref.device) if ref is not None else (torch.float32, None)
    return SkippedBlock(getattr(attn, "layer_idx", None), dtype, device)
