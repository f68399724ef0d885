"""SmolVLA's prefix prefill through a run of kv-only language layers, in one pass instead of layer by layer.

After a keep-K/V drop, a run of consecutive kv-only layers (DTR's default drops the last blocks: 4 full
blocks and a run of 12 for 12 / 16) all project the *same* prefix hidden state, since h passes through each
of them (h_out = h_in). Layer by layer, each costs an RMSNorm, two small GEMMs (k, v on the prefix's rows),
RoPE and a cache write: measured at 0.86 ms per layer, ~32 GFLOP/s where the full blocks reach ~57, on
benchmarks/drop_latency.py's model (2-core AMD EPYC, 53 prefix tokens). Here, in the prefill of inference (no
suffix, no autograd), a run goes in one pass with the same arithmetic:
  - the RMSNorm statistic x * rsqrt(mean(x^2) + eps) once (same input and eps in every layer), then each
    layer's gain, as transformers' LlamaRMSNorm does it (bit-identical);
  - one batched matmul of the run's normalized inputs (n, B*L, d) by its stacked [k; v] weights (n, d,
    2 * d_kv), stacked once and reused until a weight changes (the same products per layer; equal to
    `nn.Linear`'s up to the last bits, tested with a tolerance);
  - lerobot's `apply_rope` once over the run's keys side by side on the head axis (elementwise: identical);
  - each layer's keys / values written to the KV cache as `keep_kv._kv_only_joint` writes them.
Anything else (training, a suffix, other norms, biases, a run of one layer) runs layer by layer.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.keep_kv import is_kv_only

# first layer of a run -> (tag of the run's weights, gains (n, d), stacked [k; v] weights (n, d, 2 * d_kv))
_STACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def run_from(model_layers: list, start: int) -> list[int]:
    """Indices of the kv-only layers from `start` up to the next full VLM block that the prefill computes
    (an expert block reads them; `joint_forward` skips the others): they all see the same hidden state."""
    run = []
    for j in range(start, len(model_layers[0])):
        block = model_layers[0][j]
        if not is_kv_only(block):
            break
        if model_layers[1][j] is not None and block.keeps_kv:
            run.append(j)
    return run


def fusable(blocks: list[nn.Module], hidden: torch.Tensor) -> bool:
    """Whether `blocks` (kv-only layers) can run in one pass on `hidden` (B, L, d): at least two, no autograd,
    float32, transformers' LlamaRMSNorm with one eps, bias-free k / v `nn.Linear`s of one shape."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if len(blocks) < 2 or torch.is_grad_enabled() or hidden.dtype != torch.float32:
        return False

    def simple(block: nn.Module) -> bool:
        norm, projections = block.input_layernorm, (block.self_attn.k_proj, block.self_attn.v_proj)
        return (
            type(norm) is LlamaRMSNorm
            and norm.weight.dtype == torch.float32
            and all(
                type(p) is nn.Linear and p.bias is None and p.weight.dtype == torch.float32
                for p in projections
            )
        )

    def shape(block: nn.Module) -> tuple:
        attn = block.self_attn
        return block.input_layernorm.variance_epsilon, attn.k_proj.weight.shape, attn.v_proj.weight.shape

    return all(simple(b) for b in blocks) and len({shape(b) for b in blocks}) == 1


def fill(blocks: list[nn.Module], idxs: list[int], hidden: torch.Tensor, positions: torch.Tensor, cache: Any):
    """Write the prefix keys (after RoPE) and values of kv-only layers `blocks` (at layer indices `idxs`) for
    the prefix hidden state `hidden` (B, L, d) at `positions` (B, L) into `cache` (a DynamicCache), each as
    (B, H_kv, L, D), as the layer-by-layer prefill does."""
    from lerobot.policies.smolvla.smolvlm_with_expert import apply_rope

    gains, weight = _stacked(blocks)
    b, length, d = hidden.shape
    x = hidden.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + blocks[0].input_layernorm.variance_epsilon)
    out = torch.bmm(gains[:, None, :] * x.reshape(1, b * length, d), weight)  # (n, B*L, 2 * d_kv)
    d_kv, head_dim = blocks[0].self_attn.k_proj.out_features, blocks[0].self_attn.head_dim
    keys = out[..., :d_kv].permute(1, 0, 2).reshape(b, length, -1, head_dim)  # (B, L, n * H_kv, D)
    keys = apply_rope(keys, positions).split(d_kv // head_dim, dim=2)
    for i, (layer_idx, k) in enumerate(zip(idxs, keys)):
        v = out[i, :, d_kv:].reshape(b, length, -1, head_dim)
        cache.update(k.transpose(1, 2), v.transpose(1, 2), layer_idx)


def _stacked(blocks: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's norm gains (n, d) and [k; v] weights (n, d, 2 * d_kv), made once and re-made when a weight is
    another tensor or was updated in place (its version counter)."""
    params = [
        (b.input_layernorm.weight, b.self_attn.k_proj.weight, b.self_attn.v_proj.weight) for b in blocks
    ]
    tag = tuple((id(p), p.data_ptr(), p._version) for ps in params for p in ps)
    entry = _STACKED.get(blocks[0])
    if entry is None or entry[0] != tag:
        gains = torch.stack([g.detach() for g, _, _ in params])
        weight = torch.stack([torch.cat([k.detach(), v.detach()]).t() for _, k, v in params]).contiguous()
        entry = (tag, gains, weight)
        _STACKED[blocks[0]] = entry
    return entry[1], entry[2]
