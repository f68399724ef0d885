"""SmolVLA's joint forward with kv-only language layers (`vlaprune.adapters.keep_kv`) and skipped expert
blocks (`vlaprune.adapters.skipped`).

`install(vwe)` puts `joint_forward` on one `SmolVLMWithExpertModel` instance (types.MethodType; the class is
untouched). It is lerobot 0.6.1's `forward` with one change: a layer whose VLM block is kv-only computes, for
the prefix, only its keys / values, and the language tokens' hidden state passes through (h_out = h_in):
  - joint self-attention layers (training, and the prefix prefill that fills the KV cache): prefix K/V
    (B, Lp, H_kv, D) joined with the expert's; only the expert's queries attend; in the prefill of
    inference a run of consecutive kv-only layers (they all see the same hidden state) is written to the
    cache in one pass (`vlaprune.adapters.smolvla.prefill`: one norm statistic, one batched matmul, one RoPE);
  - cross-attention layers (training): the expert projects the prefix K/V with its own k/v projections, as
    in lerobot's `forward_cross_attn_layer`, without the prefix's own attention;
  - denoising steps (prefix None) read the cache and never touch the VLM block: the expert runs alone
    (`vlaprune.adapters.smolvla.denoise`: RoPE tables once per step, no cache copies, cross-attention
    prefix K/V projected once per chunk, fused GQA attention; equal to lerobot's up to the last bits).
Layers with full blocks run lerobot's own `forward_attn_layer` / `forward_cross_attn_layer`. A kv-only layer
that no expert block reads (fewer expert blocks than VLM blocks, or its partner skipped) is skipped entirely.
A skipped expert block (action-only drop) counts as "no expert block at this layer", as lerobot's code
already handles for VLM blocks without a partner: the VLM block runs alone on the prefix, the expert's
tokens pass through; in denoising steps (no prefix) such a layer does nothing and is not run.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.keep_kv import install_forward, is_kv_only
from vlaprune.adapters.skipped import is_skipped
from vlaprune.adapters.smolvla import denoise, prefill


def install(vwe: nn.Module) -> None:
    """Make `vwe` (a SmolVLMWithExpertModel) run kv-only layers; idempotent."""
    install_forward(vwe, joint_forward)


@contextlib.contextmanager
def inference(policy: nn.Module) -> Iterator[None]:
    """While active, an uncut SmolVLA runs `joint_forward`, the code every in-place cut runs: its denoising
    steps skip work lerobot repeats per step (`denoise`), so closed-loop policy calls are faster (the shipped
    demo policy: 40.5 vs 49.1 ms per chunk, 1 thread, actions equal bit for bit) and a DTR baseline runs the
    same arithmetic as its cuts. A model that already runs it is left as it is; the override is removed on
    exit (`Family.inference`)."""
    vwe = policy.model.vlm_with_expert
    if "forward" in vars(vwe):
        yield
        return
    install(vwe)
    try:
        yield
    finally:
        vars(vwe).pop("forward", None)


def joint_forward(
    self: nn.Module,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    inputs_embeds: list[torch.Tensor | None] | None = None,
    use_cache: bool | None = None,
) -> tuple[list[torch.Tensor | None], Any]:
    """SmolVLMWithExpertModel.forward. inputs_embeds: [prefix (B, Lp, d_vlm) or None, suffix (B, Ls,
    d_expert) or None]; returns both streams after the final norms, and the KV cache."""
    from transformers.cache_utils import DynamicCache

    models = [self.get_vlm_model().text_model, self.lm_expert]
    model_layers = self.get_model_layers(models)
    model_layers[1] = [None if is_skipped(b) else b for b in model_layers[1]]
    batch_size = next(h.shape[0] for h in inputs_embeds if h is not None)
    fill_kv_cache = use_cache and past_key_values is None  # prefix prefill: every layer is joint
    if fill_kv_cache:
        past_key_values = DynamicCache()
    head_dim = self.vlm.config.text_config.head_dim
    every = self.self_attn_every_n_layers
    denoising = inputs_embeds[0] is None and past_key_values is not None and not fill_kv_cache
    tables = denoise.step_tables(position_ids, attention_mask, head_dim) if denoising else None
    filled: set[int] = set()  # kv-only layers the prefill already wrote in one pass (`prefill`)
    for layer_idx in range(self.num_vlm_layers):
        kv_only = is_kv_only(model_layers[0][layer_idx])
        if kv_only and fill_kv_cache and inputs_embeds[-1] is None and layer_idx not in filled:
            run = _prefill_run(model_layers, inputs_embeds[0], layer_idx, position_ids, past_key_values)
            filled.update(run)
        if layer_idx in filled:
            continue
        if model_layers[1][layer_idx] is None and (kv_only or inputs_embeds[0] is None):
            continue  # nothing of this layer is left to run (or, denoising, nothing of it reads the suffix)
        joint = fill_kv_cache or "cross" not in self.attention_mode or (every > 0 and layer_idx % every == 0)
        if denoising:  # the expert alone on the cached prefix K/V (`denoise`: fused attention, no copies)
            expert = model_layers[1][layer_idx]
            hidden = denoise.expert_block(
                expert, past_key_values, layer_idx, inputs_embeds[1], tables, not joint
            )
            inputs_embeds = [None, hidden]
            continue
        if kv_only and inputs_embeds[0] is not None and (joint or not past_key_values):
            step = _kv_only_joint if joint else _kv_only_cross
            step = types.MethodType(step, self)
        else:
            step = self.forward_attn_layer if joint else self.forward_cross_attn_layer
        att_outputs, past_key_values = step(
            model_layers,
            inputs_embeds,
            layer_idx,
            position_ids,
            attention_mask,
            batch_size=batch_size,
            head_dim=head_dim,
            use_cache=use_cache,
            past_key_values=past_key_values,
        )
        inputs_embeds = _residuals(model_layers, inputs_embeds, layer_idx, att_outputs)
    outputs = [None if h is None else models[i].norm(h) for i, h in enumerate(inputs_embeds)]
    return outputs, past_key_values


def _prefill_run(model_layers: list, prefix: torch.Tensor, start: int, position_ids, cache) -> list[int]:
    """The kv-only run from layer `start` written to the cache in one pass (`prefill`), when it can be;
    returns the layer indices written ([]: run them layer by layer)."""
    run = prefill.run_from(model_layers, start)
    blocks = [model_layers[0][j] for j in run]
    if not prefill.fusable(blocks, prefix):
        return []
    prefill.fill(blocks, run, prefix, position_ids[:, : prefix.shape[1]], cache)
    return run


def _residuals(model_layers: list, inputs_embeds: list, layer_idx: int, att_outputs: list) -> list:
    """Each stream's residual updates (o_proj + MLP) as in lerobot's forward; kv-only blocks pass h through.
    att_outputs: one (B, L_all, H*D) for joint layers run by lerobot, else one per stream."""
    outputs_embeds = []
    start = 0
    for i, hidden_states in enumerate(inputs_embeds):
        layer = model_layers[i][layer_idx]
        att_output = att_outputs[i] if i < len(att_outputs) else att_outputs[0]
        if hidden_states is None:
            outputs_embeds.append(None)
            continue
        if layer is None or is_kv_only(layer):
            outputs_embeds.append(hidden_states)  # h_out = h_in
            continue
        end = start + hidden_states.shape[1]
        if att_output.dtype != layer.self_attn.o_proj.weight.dtype:
            att_output = att_output.to(layer.self_attn.o_proj.weight.dtype)
        out_emb = layer.self_attn.o_proj(att_output[:, start:end])
        out_emb += hidden_states
        after_first_residual = out_emb.clone()
        out_emb = layer.post_attention_layernorm(out_emb)
        out_emb = layer.mlp(out_emb)
        out_emb += after_first_residual
        outputs_embeds.append(out_emb)
        start = end if len(att_outputs) == 1 else 0
    return outputs_embeds


def _expert_qkv(layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The expert block's q, k, v for its own tokens, each (B, Ls, H, D)."""
    h = layer.input_layernorm(hidden)
    shape = (*h.shape[:-1], -1, layer.self_attn.head_dim)
    h = h.to(dtype=layer.self_attn.q_proj.weight.dtype)
    a = layer.self_attn
    return a.q_proj(h).view(shape), a.k_proj(h).view(shape), a.v_proj(h).view(shape)


def _kv_only_joint(
    self, model_layers, inputs_embeds, layer_idx, position_ids, attention_mask, *, batch_size, head_dim,
    use_cache=True, past_key_values=None,
):  # fmt: skip
    """A joint self-attention layer whose VLM block is kv-only: keys / values over [prefix; suffix], queries
    from the suffix only (lerobot's `forward_attn_layer` without the prefix rows). Returns [None, (B, Ls,
    H*D)], or [None] in the prefix prefill (the cache update is all the layer does there)."""
    from lerobot.policies.smolvla.smolvlm_with_expert import apply_rope

    prefix, suffix = inputs_embeds[0], inputs_embeds[1] if len(inputs_embeds) > 1 else None
    k, v = model_layers[0][layer_idx].kv(prefix)  # (B, Lp, H_kv, D)
    expert = model_layers[1][layer_idx]
    query = None
    if suffix is not None and expert is not None:
        query, k_s, v_s = _expert_qkv(expert, suffix)
        k, v = torch.cat([k, k_s], dim=1), torch.cat([v, v_s], dim=1)
    seq_len = k.shape[1]
    positions, mask = position_ids, attention_mask
    if seq_len < position_ids.shape[1]:
        positions, mask = position_ids[:, :seq_len], attention_mask[:, :seq_len, :seq_len]
    k = apply_rope(k, positions)
    if use_cache:
        k, v = past_key_values.update(k.transpose(1, 2), v.transpose(1, 2), layer_idx)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    if query is None:
        return [None], past_key_values
    n_prefix = prefix.shape[1]
    query = apply_rope(query, positions[:, n_prefix:])
    att = self.get_attention_interface()(mask[:, n_prefix:], batch_size, head_dim, query, k, v)
    return [None, att], past_key_values


def _kv_only_cross(
    self, model_layers, inputs_embeds, layer_idx, position_ids, attention_mask, *, batch_size, head_dim,
    use_cache=True, past_key_values=None,
):  # fmt: skip
    """A cross-attention layer whose VLM block is kv-only (training): the expert reads the prefix K/V
    through its own k/v projections, as in lerobot's `forward_cross_attn_layer`; the prefix's own attention
    is skipped. Returns [None, (B, Ls, H*D)]."""
    from lerobot.policies.smolvla.smolvlm_with_expert import apply_rope

    n_prefix = inputs_embeds[0].shape[1]
    k, v = model_layers[0][layer_idx].kv(inputs_embeds[0])  # (B, Lp, H_kv, D)
    k = apply_rope(k, position_ids[:, :n_prefix])
    expert = model_layers[1][layer_idx]
    a = expert.self_attn
    h = expert.input_layernorm(inputs_embeds[1])
    query = a.q_proj(h.to(dtype=a.q_proj.weight.dtype)).view(*h.shape[:-1], -1, a.head_dim)
    k = k.to(dtype=a.k_proj.weight.dtype).reshape(*k.shape[:2], -1)
    v = v.to(dtype=a.v_proj.weight.dtype).reshape(*v.shape[:2], -1)
    k = a.k_proj(k).view(*k.shape[:-1], -1, a.head_dim)
    v = a.v_proj(v).view(*v.shape[:-1], -1, a.head_dim)
    positions = position_ids[:, n_prefix:]
    positions = positions - torch.min(positions, dim=1, keepdim=True).values  # the expert starts at 0
    mask = attention_mask[:, -inputs_embeds[1].shape[1] :, : k.shape[1]]
    att = self.get_attention_interface()(mask, batch_size, head_dim, apply_rope(query, positions), k, v)
    return [None, att], past_key_values
