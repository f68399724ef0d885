"""pi0 / pi0.5's joint forward with kv-only language layers (`vlaprune.adapters.keep_kv`) and skipped expert
blocks (`vlaprune.adapters.skipped`).

`install(pwe)` puts `joint_forward` on one `PaliGemmaWithExpertModel` instance (types.MethodType; the class is
untouched). Of lerobot 0.6.1's three branches only the joint one (prefix and suffix together: the training
loss) changes, layer by layer:
  language full,    expert full      lerobot's own `compute_layer_complete`
  language kv-only, expert full      `kv_only_layer`: the prefix passes through, the expert reads its K/V
  language full,    expert skipped   `language_only_layer`: the prefix runs its block alone, the suffix
                                     passes through (the prefix never attends to the suffix, so its output
                                     is the joint layer's)
  language kv-only, expert skipped   nothing runs: both streams pass through
The prefix prefill (suffix None) runs lerobot's code, in which PiGemmaModel calls each `KVOnlyLayer.forward`
(it fills the KV cache for its layer and passes h through); denoising steps (prefix None) run the expert as
a GemmaModel that calls each `SkippedBlock.forward` (h passes through; the cache of that layer is not read).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.keep_kv import install_forward, is_kv_only
from vlaprune.adapters.skipped import is_skipped


def install(pwe: nn.Module) -> None:
    """Make `pwe` (a PaliGemmaWithExpertModel of pi0 or pi0.5) run kv-only layers; idempotent."""
    install_forward(pwe, joint_forward)


def joint_forward(
    self: nn.Module,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    inputs_embeds: list[torch.Tensor | None] | None = None,
    use_cache: bool | None = None,
    adarms_cond: list[torch.Tensor | None] | None = None,
) -> tuple[list[torch.Tensor | None], Any]:
    """PaliGemmaWithExpertModel.forward. inputs_embeds: [prefix (B, Lp, d_vlm) or None, suffix (B, Ls,
    d_expert) or None]; attention_mask (B, 1, L, L) additive."""
    if inputs_embeds[0] is None or inputs_embeds[1] is None:
        return type(self).forward(
            self, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache, adarms_cond
        )
    lerobot = sys.modules[type(self).__module__]  # modeling_pi0 or modeling_pi05: their own layer code
    adarms_cond = adarms_cond if adarms_cond is not None else [None, None]
    language = self.paligemma.model.language_model
    checkpointed = self.training and (
        getattr(self.gemma_expert.model, "gradient_checkpointing", False)
        or getattr(self, "gradient_checkpointing", False)
    )
    for layers in zip(language.layers, self.gemma_expert.model.layers, strict=True):
        if is_skipped(layers[1]):
            if is_kv_only(layers[0]):
                continue  # nothing of this layer is left: both streams pass through
            step = functools.partial(language_only_layer, complete=lerobot.compute_layer_complete)
        else:
            step = kv_only_layer if is_kv_only(layers[0]) else lerobot.compute_layer_complete
        args = (inputs_embeds, attention_mask, position_ids, adarms_cond)
        kw = {"layers": layers, "rotary_emb": language.rotary_emb}
        if checkpointed:
            inputs_embeds = torch.utils.checkpoint.checkpoint(
                step, *args, use_reentrant=False, preserve_rng_state=False, **kw
            )
        else:
            inputs_embeds = step(*args, **kw)
    norms = (language.norm, self.gemma_expert.model.norm)
    outputs = [lerobot.layernorm_forward(n, h, c)[0] for n, h, c in zip(norms, inputs_embeds, adarms_cond)]
    return outputs, None


def kv_only_layer(inputs_embeds, attention_mask, position_ids, adarms_cond, layers, rotary_emb):
    """lerobot's `compute_layer_complete` for a kv-only language block: keys / values over [prefix; suffix]
    (B, H_kv, Lp + Ls, D), queries from the suffix only; the prefix passes through (h_out = h_in), the
    expert block runs as usual. Returns [prefix, suffix out]."""
    from lerobot.policies.pi_gemma import _gated_residual, layernorm_forward
    from transformers.models.gemma import modeling_gemma

    lang, expert = layers
    prefix, suffix = inputs_embeds
    n_prefix = prefix.shape[1]
    k_p, v_p = (t.transpose(1, 2) for t in lang.kv(prefix, adarms_cond[0]))  # (B, H_kv, Lp, D)
    h, gate = layernorm_forward(expert.input_layernorm, suffix, adarms_cond[1])
    shape = (*h.shape[:-1], -1, expert.self_attn.head_dim)
    a = expert.self_attn
    query = a.q_proj(h).view(shape).transpose(1, 2)  # (B, H, Ls, D)
    key = torch.cat([k_p, a.k_proj(h).view(shape).transpose(1, 2)], dim=2)
    value = torch.cat([v_p, a.v_proj(h).view(shape).transpose(1, 2)], dim=2)
    dummy = torch.zeros(query.shape[0], key.shape[2], query.shape[-1], device=query.device, dtype=query.dtype)
    cos, sin = rotary_emb(dummy, position_ids)  # (B, Lp + Ls, D)
    query, _ = modeling_gemma.apply_rotary_pos_emb(query, query, cos[:, n_prefix:], sin[:, n_prefix:], 1)
    _, key = modeling_gemma.apply_rotary_pos_emb(key, key, cos, sin, unsqueeze_dim=1)
    att, _ = modeling_gemma.eager_attention_forward(
        lang.self_attn, query, key, value, attention_mask[:, :, n_prefix:], lang.self_attn.scaling
    )
    att = att.reshape(att.shape[0], att.shape[1], -1)  # (B, Ls, H*D)
    if att.dtype != a.o_proj.weight.dtype:
        att = att.to(a.o_proj.weight.dtype)
    out = _gated_residual(suffix, a.o_proj(att), gate)
    after_first_residual = out.clone()
    out, gate = layernorm_forward(expert.post_attention_layernorm, out, adarms_cond[1])
    if expert.mlp.up_proj.weight.dtype == torch.bfloat16:
        out = out.to(dtype=torch.bfloat16)
    out = _gated_residual(after_first_residual, expert.mlp(out), gate)
    return [prefix, out]


def language_only_layer(
    inputs_embeds, attention_mask, position_ids, adarms_cond, layers, rotary_emb, *, complete
):
    """A layer whose expert block was removed by an action-only drop: lerobot's `compute_layer_complete`
    (`complete`, of pi0 or pi0.5) on the prefix stream alone (attention over the prefix rows / columns of the
    joint mask, prefix positions); the suffix passes through (h_out = h_in). Returns [prefix out, suffix]."""
    prefix, suffix = inputs_embeds
    n = prefix.shape[1]
    (out,) = complete(
        [prefix], attention_mask[:, :, :n, :n], position_ids[:, :n], adarms_cond[:1], layers[:1], rotary_emb
    )
    return [out, suffix]
