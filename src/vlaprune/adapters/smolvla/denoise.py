"""SmolVLA's denoising steps without the work lerobot repeats at every step and layer.

A denoising step (prefix None, KV cache filled by the prefix pass) runs only the action expert: per layer
its queries (and, in self-attention layers, its own keys / values) attend to the cached prefix K/V. lerobot
0.6.1 does, per step and per layer, work whose result is the same every time or never read:
  - RoPE: `apply_rope` rebuilds the frequencies and sin / cos of the same positions for q and for k in
    every layer; here they are computed once per step (`rope_tables`) and applied in half the ops with the
    same arithmetic (`rope`, bit-identical; the halves swapped by one `roll`);
  - RMSNorm: six elementwise ops per norm; here torch's fused `rms_norm` (`norm`);
  - self-attention layers append the suffix K/V to the cache (a copy of the whole prefix K/V) and
    `denoise_step` crops it off again; here the suffix K/V are joined for the attention only, the cache
    is never written (lerobot's crop then has nothing to do);
  - cross-attention layers project the cached prefix K/V with the expert's k / v projections at every
    step; here once per action chunk, memoized on the cache object (the prefix K/V never change within it);
  - eager attention: the GQA `expand` copies every key / value head, a `where` masks and a softmax runs on
    its own; here the query heads of one K/V head are stacked (`attend`: one `baddbmm` adding the mask,
    made additive once per step, a softmax, one `bmm`; 2-3x faster than torch's fused CPU attention on
    these shapes, measured: 52 vs 120-150 us for 32 heads x 10 queries x 63 keys);
  - the expert's linear layers: a denoising step multiplies a handful of rows (chunk x batch, e.g. 10) by
    every weight of the expert, which MKL's GEMM does at a fraction of the memory bandwidth (it repacks
    the weight at every call); here they run on weights packed once for oneDNN, q / k / v and gate / up
    in one call each (`vlaprune.adapters.packed`: 2-4x faster per call; CPU float32 without autograd or
    hooks only, else `layer(x)`).
This attention and oneDNN's GEMM sum in another order than lerobot's eager code: actions differ from
lerobot's in the last bits (tested with a tolerance, rtol 1e-5). Every SmolVLA with an in-place cut runs
this code, and so does the uncut reference of the speed benchmark (`benchmarks/drop_latency.py`), so cut
and uncut compare the same arithmetic. The prefix pass and training are unchanged (lerobot's code).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlaprune.adapters.packed import linear, linears


def rope_tables(positions: torch.Tensor, head_dim: int, max_wavelength: int = 10_000) -> tuple:
    """(cos, cos), (-sin, sin) joined, each (B, L, 1, head_dim), for positions (B, L): lerobot's
    `apply_rope` frequencies, same ops, laid out for `rope`."""
    d_half = head_dim // 2
    freq_exponents = (2.0 / head_dim) * torch.arange(d_half, dtype=torch.float32, device=positions.device)
    timescale = max_wavelength**freq_exponents
    radians = positions[..., None].to(torch.float32) / timescale[None, None, :].to(torch.float32)
    cos, sin = torch.cos(radians[..., None, :]), torch.sin(radians[..., None, :])
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def rope(x: torch.Tensor, tables: tuple) -> torch.Tensor:
    """lerobot's `apply_rope` of x (B, L, H, D), bit-identical in 4 ops instead of 8: with halves x1, x2,
    [x1 cos - x2 sin, x2 cos + x1 sin] = x * (cos, cos) + (x2, x1) * (-sin, sin) (a - b = a + (-b) exactly
    in IEEE arithmetic, and the products and sums are the same)."""
    cos2, sin2 = tables
    dtype, x = x.dtype, x.to(torch.float32)
    swapped = x.roll(x.shape[-1] // 2, -1)  # (x2, x1): one copy (a flip of the halves costs 2x as long)
    return (x * cos2 + swapped * sin2).to(dtype)


def norm(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for an RMSNorm; transformers' LlamaRMSNorm (SmolVLA's expert) as torch's fused `rms_norm`
    (one op instead of six; same formula x * rsqrt(mean(x^2) + eps) * weight in float32, summed in
    another order: last bits)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if type(layer) is not LlamaRMSNorm or x.dtype != torch.float32 or layer.weight.dtype != torch.float32:
        return layer(x)
    return torch.nn.functional.rms_norm(x, layer.weight.shape, layer.weight, layer.variance_epsilon)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: dict) -> torch.Tensor:
    """GQA attention without copying K/V per query head: q (B, Lq, H, D), k / v (B, H_kv, Lk, D) (the
    cache's layout; Lk may be the prefix only, cross layers). The H / H_kv query heads of one K/V head
    (h = j * g + i, as `repeat_kv` pairs them) are stacked as rows of one matrix, so one batched matmul
    with the additive mask added (`baddbmm`), a softmax and one more matmul do the layer. Returns (B, Lq,
    H*D), float32 as lerobot's eager attention (which upcasts q and k)."""
    b, lq, h, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    g = h // hk
    qg = q.to(torch.float32).permute(0, 2, 1, 3).reshape(b * hk, g * lq, d)
    kg, vg = (t.to(torch.float32).reshape(b * hk, lk, d) for t in (k, v))
    scores = torch.baddbmm(_grouped_mask(tables, hk, g, lk), qg, kg.transpose(1, 2), alpha=d**-0.5)
    out = torch.bmm(torch.softmax(scores, dim=-1), vg)  # (B * H_kv, g * Lq, D)
    return out.view(b, hk, g, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, h * d)


def _grouped_mask(tables: dict, hk: int, g: int, lk: int) -> torch.Tensor:
    """The step's mask (B, Lq, >= Lk) bool as the additive (B * H_kv, g * Lq, Lk) `attend` adds (0 = attend,
    -inf = not; every row attends somewhere in a denoising step), made once per step and shape."""
    key = ("mask", hk, g, lk)
    if key not in tables:
        mask = tables["mask"][..., :lk]
        b, lq = mask.shape[:2]
        add = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
            ~mask, float("-inf")
        )
        tables[key] = add[:, None, None].expand(b, hk, g, lq, lk).reshape(b * hk, g * lq, lk)
    return tables[key]


def step_tables(position_ids: torch.Tensor, attention_mask: torch.Tensor, head_dim: int) -> dict:
    """What every layer of one denoising step shares: the RoPE tables (self-attention layers place the
    expert's tokens after the prefix (position_ids), cross-attention layers count them from 0, as lerobot's
    `forward_cross_attn_layer`) and the attention mask (B, Ls, Lp + Ls) bool (True = attend), made
    additive per K/V shape on first use (`_grouped_mask`)."""
    cross = position_ids - torch.min(position_ids, dim=1, keepdim=True).values
    return {
        "self": rope_tables(position_ids, head_dim),
        "cross": rope_tables(cross, head_dim),
        "mask": attention_mask,
    }


def expert_block(
    expert: nn.Module, cache: Any, layer_idx: int, hidden: torch.Tensor, tables: dict, cross: bool
) -> torch.Tensor:
    """Expert block `expert` at layer `layer_idx` in a denoising step, whole: hidden (B, Ls, d) the expert's
    tokens, tables from `step_tables`. Returns the block's output (B, Ls, d): lerobot's residual stream
    (o_proj + h, then the MLP on its post-attention norm, plus that sum). The cache is read only."""
    att = _attention(expert, cache, layer_idx, hidden, tables, cross)
    a, mlp = expert.self_attn, expert.mlp
    out = linear(a.o_proj, att.to(a.o_proj.weight.dtype)) + hidden
    h = norm(expert.post_attention_layernorm, out)
    if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):  # Llama's gated MLP
        gate, up = linears((mlp.gate_proj, mlp.up_proj), h)
        h = linear(mlp.down_proj, mlp.act_fn(gate) * up)
    else:
        h = mlp(h)
    return h + out


def _attention(
    expert: nn.Module, cache: Any, layer_idx: int, hidden: torch.Tensor, tables: dict, cross: bool
) -> torch.Tensor:
    """The block's attention output (B, Ls, H*D) for `o_proj` (self layers: over [cached prefix; own K/V],
    cross layers: over the expert's projection of the cached prefix K/V)."""
    a = expert.self_attn
    h = norm(expert.input_layernorm, hidden).to(dtype=a.q_proj.weight.dtype)
    shape = (*h.shape[:-1], -1, a.head_dim)
    cached = cache.layers[layer_idx]
    if cross:
        k, v = _projected_prefix(a, cache, layer_idx)
        q = rope(linear(a.q_proj, h).view(shape), tables["cross"])
        return attend(q, k, v, tables)
    q, k_s, v_s = (t.view(shape) for t in linears((a.q_proj, a.k_proj, a.v_proj), h))
    k_s = rope(k_s, tables["self"]).transpose(1, 2)
    v_s = v_s.transpose(1, 2)
    k = torch.cat([cached.keys, k_s.to(cached.keys.dtype)], dim=2)
    v = torch.cat([cached.values, v_s.to(cached.values.dtype)], dim=2)
    return attend(rope(q, tables["self"]), k, v, tables)


def _projected_prefix(attn: nn.Module, cache: Any, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert's k / v projections of layer `layer_idx`'s cached prefix K/V, each (B, H_kv, Lp, D),
    computed once per cache (memoized on it; the prefix K/V of a cross layer are never written while
    denoising)."""
    cached = cache.layers[layer_idx]
    memo = cache.__dict__.setdefault("_vlaprune_cross_kv", {})
    tag = (cached.keys.data_ptr(), cached.values.data_ptr(), tuple(cached.keys.shape))
    if layer_idx not in memo or memo[layer_idx][0] != tag:
        k, v = cached.keys.transpose(1, 2), cached.values.transpose(1, 2)  # (B, Lp, H_kv, D)
        k = linear(attn.k_proj, k.to(dtype=attn.k_proj.weight.dtype).reshape(*k.shape[:2], -1))
        v = linear(attn.v_proj, v.to(dtype=attn.v_proj.weight.dtype).reshape(*v.shape[:2], -1))
        shape = (*k.shape[:-1], -1, attn.head_dim)
        memo[layer_idx] = (tag, k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2))
    return memo[layer_idx][1], memo[layer_idx][2]
