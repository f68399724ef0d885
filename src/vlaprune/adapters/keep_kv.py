"""Keep-K/V layers: what stays of a language block that DTR drops in a joint-attention VLA.

In SmolVLA, pi0 and pi0.5 the action expert attends to every language layer's prefix keys / values. The
paper drops a language block for real while the expert keeps all of its blocks: the block becomes a
`KVOnlyLayer` holding only what the expert needs (input norm, k_proj, v_proj, and the head geometry the
joint code reads). The language tokens' hidden state passes through unchanged (h_out = h_in); their queries,
attention output, o_proj, post-attention norm and MLP are gone, weights and compute alike.

The families' joint forwards learn to run such layers through instance-level overrides installed on the
joint module (`keep_kv_smolvla.install`, `keep_kv_pi.install`; lerobot's classes are never patched).
Parameter names are kept (`layers.3.input_layernorm.weight`, `layers.3.self_attn.k_proj.weight`), so a
pruned checkpoint reloads strictly once the plan is replayed.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# attributes of the original attention module that joint code reads from the language layer
GEOMETRY = (
    "head_dim",
    "scaling",
    "num_key_value_groups",
    "attention_dropout",
    "is_causal",
    "layer_idx",
    "config",
)


class RemovedProjection:
    """Stands in for the removed q_proj where lerobot only probes its dtype (pi0 / pi0.5 read
    `language_model.layers[0].self_attn.q_proj.weight.dtype` to pick bf16): `.weight` is the kept k_proj
    weight; calling it raises, so a forward path that does not know kv-only layers fails loudly."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("q_proj was removed by a keep-K/V drop; this forward does not know kv-only layers")


class KVOnlyAttention(nn.Module):
    """The kept half of a dropped block's attention: k_proj and v_proj (None when no expert block reads
    this layer), plus the original head geometry (`GEOMETRY`)."""

    def __init__(self, attn: nn.Module, keep: bool) -> None:
        super().__init__()
        for name in GEOMETRY:
            if hasattr(attn, name):
                setattr(self, name, getattr(attn, name))
        self.k_proj = attn.k_proj if keep else None
        self.v_proj = attn.v_proj if keep else None

    @property
    def q_proj(self) -> RemovedProjection | None:
        return None if self.k_proj is None else RemovedProjection(self.k_proj.weight)


class KVOnlyLayer(nn.Module):
    """A dropped language block that the action expert still reads: input norm + k/v projections.

    `kv(h)` gives this layer's prefix keys / values, each (B, L, H_kv, D), keys before RoPE. `forward` keeps
    the transformers decoder-layer contract (pi0 / pi0.5's prefix prefill calls it through PiGemmaModel): it
    stores the layer's K/V (keys after RoPE, (B, H_kv, L, D)) in the cache and returns h unchanged."""

    kv_only = True

    def __init__(self, block: nn.Module, keep: bool) -> None:
        super().__init__()
        self.input_layernorm = block.input_layernorm if keep else None
        self.self_attn = KVOnlyAttention(block.self_attn, keep)

    @property
    def keeps_kv(self) -> bool:
        return self.self_attn.k_proj is not None

    def kv(self, hidden: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        attn = self.self_attn
        h = norm(self.input_layernorm, hidden, cond).to(attn.k_proj.weight.dtype)  # (B, L, d_model)
        shape = (*h.shape[:-1], -1, attn.head_dim)
        return attn.k_proj(h).view(shape), attn.v_proj(h).view(shape)

    def forward(
        self,
        hidden_states: torch.Tensor,
        past_key_values: Any = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        adarms_cond: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if past_key_values is not None and self.keeps_kv:
            from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

            k, v = (t.transpose(1, 2) for t in self.kv(hidden_states, adarms_cond))  # (B, H_kv, L, D)
            cos, sin = position_embeddings
            k, _ = apply_rotary_pos_emb(k, k, cos, sin)
            past_key_values.update(k, v, self.self_attn.layer_idx)
        elif past_key_values is not None:  # nobody reads this layer: an empty entry keeps the cache cloneable
            empty = hidden_states.new_zeros(hidden_states.shape[0], 1, 0, 1)
            past_key_values.update(empty, empty, self.self_attn.layer_idx)
        return hidden_states


def norm(module: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """A norm's output (pi's PiGemmaRMSNorm returns (out, gate); the gate only scales the dropped branch)."""
    out = module(x) if cond is None else module(x, cond=cond)
    return out[0] if isinstance(out, tuple) else out


def install_forward(joint: nn.Module, forward: Callable) -> None:
    """Make `joint` (a family's joint VLM + expert module) run `forward`, a joint forward that knows kv-only
    layers and skipped blocks: an instance-level override, lerobot's class is never patched; idempotent."""
    if getattr(joint.__dict__.get("forward"), "__func__", None) is not forward:
        joint.forward = types.MethodType(forward, joint)


def is_kv_only(block: nn.Module | None) -> bool:
    return isinstance(block, KVOnlyLayer)


def make_kv_only(block: nn.Module, keep: bool = True) -> KVOnlyLayer:
    """The kv-only remnant of `block` (its own norm / k / v modules, not copies); keep=False keeps nothing
    (no expert block reads this layer), leaving a pass-through that holds the layer's index."""
    return KVOnlyLayer(block, keep)
