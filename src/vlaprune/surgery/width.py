"""Shrink the hidden width of a residual MLP head: the DTR paper's cut of OpenVLA-OFT's action head (the
MLP-ResNet's hidden 4096 -> 2048 / 256), a unit cut on the head's residual stream.

    plan = shrink_width(layout, "action", 2048, criterion="magnitude")

The head is `layer_norm1 -> fc1 -> ReLU -> blocks (x + ffn(x), ffn = LayerNorm -> Linear(H, H) -> ReLU) ->
layer_norm2 -> fc2`: one stream of H channels runs through every block, so the same kept channels K are cut
everywhere: fc1's rows, each block's LayerNorm and its Linear's rows and columns, layer_norm2, fc2's columns.
The LayerNorms then normalize over |K| channels instead of H, so the cut head is not the full head with
channels zeroed: it is a smaller head initialized from the full one, to be recovered (the paper fine-tunes).

Criteria (`CRITERIA`, higher = keep), per channel c of the stream:
  magnitude  ||fc1 row c|| + sum over blocks (||W row c|| + ||W column c||) + ||fc2 column c||
  first      keep channels 0..N-1 (positional)
  random     seeded random scores
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlaprune.adapters.counting import unique_params
from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError
from vlaprune.surgery.plan import WidthPlan


def _magnitude(resnet: nn.Module, seed: int) -> torch.Tensor:
    score = resnet.fc1.weight.detach().float().norm(dim=1) + resnet.fc2.weight.detach().float().norm(dim=0)
    for block in resnet.mlp_resnet_blocks:
        w = block.ffn[1].weight.detach().float()
        score = score + w.norm(dim=1) + w.norm(dim=0)
    return score


def _first(resnet: nn.Module, seed: int) -> torch.Tensor:
    return -torch.arange(resnet.fc1.out_features, dtype=torch.float32)


def _random(resnet: nn.Module, seed: int) -> torch.Tensor:
    return torch.rand(resnet.fc1.out_features, generator=torch.Generator().manual_seed(seed))


CRITERIA: dict[str, Callable[[nn.Module, int], torch.Tensor]] = {
    "magnitude": _magnitude,
    "first": _first,
    "random": _random,
}


def resnet_of(layout: Layout, stack: str) -> nn.Module:
    """The MLP-ResNet that holds `stack`'s blocks (fc1, mlp_resnet_blocks, layer_norm2, fc2)."""
    if stack not in layout.stacks:
        raise VlapruneError(f"no stack {stack!r} in this model (stacks: {', '.join(layout.stacks)})")
    resnet = layout.stacks[stack].parent
    if not all(hasattr(resnet, n) for n in ("fc1", "layer_norm2", "fc2", "mlp_resnet_blocks")):
        raise VlapruneError(
            f"{stack}: its blocks do not sit in an MLP-ResNet (fc1, mlp_resnet_blocks, layer_norm2, fc2) "
            "such as OpenVLA-OFT's action head; a width cut applies to such a head only"
        )
    return resnet


def _rows(lin: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    out = nn.Linear(lin.in_features, len(keep), bias=lin.bias is not None).to(lin.weight)
    out.weight.data.copy_(lin.weight.data[keep])
    if lin.bias is not None:
        out.bias.data.copy_(lin.bias.data[keep])
    return out


def _cols(lin: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    out = nn.Linear(len(keep), lin.out_features, bias=lin.bias is not None).to(lin.weight)
    out.weight.data.copy_(lin.weight.data[:, keep])
    if lin.bias is not None:
        out.bias.data.copy_(lin.bias.data)
    return out


def _norm(ln: nn.LayerNorm, keep: torch.Tensor) -> nn.LayerNorm:
    out = nn.LayerNorm(len(keep), eps=ln.eps).to(ln.weight)
    out.weight.data.copy_(ln.weight.data[keep])
    out.bias.data.copy_(ln.bias.data[keep])
    return out


@torch.no_grad()
def apply_width(resnet: nn.Module, kept: list[int]) -> None:
    """Keep only the stream channels `kept` (ascending) in every layer that reads or writes the stream."""
    keep = torch.tensor(kept, dtype=torch.long, device=resnet.fc1.weight.device)
    resnet.fc1 = _rows(resnet.fc1, keep)
    for block in resnet.mlp_resnet_blocks:
        block.ffn[0] = _norm(block.ffn[0], keep)
        block.ffn[1] = _cols(_rows(block.ffn[1], keep), keep)
        block.dim = len(kept)
    resnet.layer_norm2 = _norm(resnet.layer_norm2, keep)
    resnet.fc2 = _cols(resnet.fc2, keep)


def shrink_width(
    layout: Layout, stack: str, width: int, criterion: str = "magnitude", seed: int = 0
) -> WidthPlan:
    """Cut the hidden width of the MLP-ResNet holding `stack` to `width` channels, chosen by `criterion`;
    raises before touching anything for a width outside 1..H-1 or an unknown criterion."""
    resnet = resnet_of(layout, stack)
    before = resnet.fc1.out_features
    if criterion not in CRITERIA:
        raise VlapruneError(f"unknown width criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if not 0 < width < before:
        raise VlapruneError(
            f"{stack}: width {width} must lie between 1 and {before - 1} (the head has {before})"
        )
    scores = CRITERIA[criterion](resnet, seed)
    kept = sorted(torch.topk(scores, width).indices.tolist())
    params_before = unique_params(layout.model)
    apply_width(resnet, kept)
    return WidthPlan(
        family=layout.family,
        model_class=type(layout.model).__name__,
        stack=stack,
        kept=kept,
        width_before=before,
        criterion=criterion,
        params_before=params_before,
        params_after=unique_params(layout.model),
    )
