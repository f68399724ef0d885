"""Linear layers on weights packed once for oneDNN, for inference steps that multiply few rows.

A denoising step of an action expert multiplies a handful of rows (chunk x batch, e.g. 10) by every weight
of the expert. MKL's GEMM (what `nn.Linear` calls on CPU) re-packs the weight at every call and reaches
5-8 GB/s of weights on the 2-core machine, where a plain read streams 31-37 GB/s: the step is bound by
that packing, not by its FLOPs. Here each weight is packed once for oneDNN (`_reorder_linear_weight`, the
packing PyTorch's inductor uses for frozen CPU inference) and reused until it changes: 2-4x faster per call
(measured, 10 x 384 by 384 x 1024). Layers that read the same input (q / k / v, gate / up) share one
packed weight, so one call does all of them.

Only where it pays (a group's weights of at least `MIN_PACKED` elements) and where it is safe, else
`layer(x)`: plain float32 CPU `nn.Linear`s, no autograd (the packed op has no backward), no forward hooks of
their own or global (a hook must see the call: FLOP counting, activation statistics), oneDNN in this torch
build. The packed weight is re-made when a weight is another tensor or was updated in place (its version
counter: an optimizer step). Results equal `nn.Linear`'s up to the last bits (another summation order).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.nn.modules import module as _hooks

# first layer of a group -> (tag of the group's weights, oneDNN-packed concatenated weight, bias or None);
# weak keys: a deleted model leaves nothing behind, a deep copy starts empty
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Smaller weights (a group's, in elements) run `layer(x)`: oneDNN's call costs ~20 us more than MKL's, which
# small weights do not win back (benchmarks/packed_linear.py, 2-core AMD EPYC, 10-50 rows, 1-2 threads:
# 96 x 256 and 128 x 384 packed 0.4-0.9x as fast, 256 x 768 0.9-1.3x, 384 x 1024 and larger 1.0-2.5x);
# 2^17 keeps benchmarks/drop_latency.py's 384 x 512 projections packed (1.1-1.3x at its 10 rows, 2 threads).
MIN_PACKED = 1 << 17


def packable(layer: nn.Module) -> bool:
    """Whether `layer` may run on a prepacked weight (see the module docstring)."""
    return (
        type(layer) is nn.Linear
        and not torch.is_grad_enabled()
        and layer.weight.device.type == "cpu"
        and layer.weight.dtype == torch.float32
        and not (layer._forward_hooks or layer._forward_pre_hooks)
        and not (_hooks._global_forward_hooks or _hooks._global_forward_pre_hooks)  # e.g. the FLOP counter
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def linears(layers: tuple[nn.Module, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(layer(x) for layer in layers) for x (..., K), each (..., N_i): one oneDNN call on the layers'
    concatenated packed weight when every layer is packable, else each layer's own forward."""
    if sum(m.weight.numel() for m in layers) < MIN_PACKED or not all(packable(layer) for layer in layers):
        return tuple(layer(x) for layer in layers)
    rows = x.numel() // x.shape[-1]
    tag = tuple((id(m), m.weight.data_ptr(), m.weight._version, tuple(m.weight.shape)) for m in layers)
    tag += tuple(None if m.bias is None else (m.bias.data_ptr(), m.bias._version) for m in layers)
    entry = _PACKED.get(layers[0])
    if entry is None or entry[0] != tag:
        w = torch.cat([m.weight.detach() for m in layers]) if len(layers) > 1 else layers[0].weight.detach()
        biases = [m.bias for m in layers]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach() if b is not None else w.new_zeros(m.out_features) for b, m in zip(biases, layers)]
        )  # fmt: skip
        entry = (tag, torch.ops.mkldnn._reorder_linear_weight(w, max(rows, 1)), bias)
        _PACKED[layers[0]] = entry
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]), entry[1], entry[2], "none", [], "")
    out = out.view(*x.shape[:-1], out.shape[-1])
    return tuple(out.split([m.out_features for m in layers], dim=-1)) if len(layers) > 1 else (out,)


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for x (..., K) -> (..., N), on a packed weight where `packable(layer)`."""
    return linears((layer,), x)[0]
