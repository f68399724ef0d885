"""Representation-similarity baselines: how much a block changes the residual stream.

  block_influence  ShortGPT's BI = 1 - mean_rows cos(h_in, h_out)
  angular          Gromov et al.'s angular distance arccos(cos(h_in, h_out)) / pi, averaged over rows (a VLA
                   runs several token streams, so there is no single "last token"; we average all rows)
Both are computed row-wise (per token, over the hidden dimension), higher = the block changes more = keep.

h_in is the input of the block's first norm. h_out is the block's output where its forward is called
(transformers models, vision towers); where the policy calls the submodules directly (lerobot VLAs) it is
the next block's h_in, and for the last block the input of the stack's final norm (`Stack.exit`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from vlaprune.errors import VlapruneError
from vlaprune.scoring.gates import branch_modules
from vlaprune.scoring.probe import Probe, Scores


def _first(args, kwargs):
    x = args[0] if args else kwargs.get("hidden_states")
    return x[0] if isinstance(x, tuple) else x


def _record(store: list, output: bool = False):
    """A hook that appends the hidden state it sees (a pre-hook's input, or a forward hook's output)."""
    if output:
        return lambda m, a, o: store.append(_first((o,), {}).detach())
    return lambda m, a, k: store.append(_first(a, k).detach())


def _observe(probe: Probe, i: int, batch: dict):
    """One calibration pass recording, per (stack, block): inputs h_in, block outputs, and stack exits."""
    model = probe.layout.model
    ins, outs, exits = defaultdict(list), defaultdict(list), defaultdict(list)
    handles = []
    try:
        for s in probe.stacks:
            stack = probe.layout.stacks[s]
            for li, (block, mods) in enumerate(zip(stack.blocks, branch_modules(probe.layout, s))):
                if mods["entry"] is None:
                    raise VlapruneError(f"stack {s!r}: blocks have no first norm to observe h_in at")
                handles.append(
                    mods["entry"].register_forward_pre_hook(_record(ins[(s, li)]), with_kwargs=True)
                )
                handles.append(block.register_forward_hook(_record(outs[(s, li)], output=True)))
            if stack.exit:
                exit_mod = model.get_submodule(stack.exit)
                handles.append(exit_mod.register_forward_pre_hook(_record(exits[s]), with_kwargs=True))
        with torch.no_grad():
            probe.loss(i, batch)
    finally:
        for h in handles:
            h.remove()
    return ins, outs, exits


def _cosines(probe: Probe) -> dict[str, list[torch.Tensor]]:
    """Per stack and block, all row-wise cosines between h_in and h_out (1-D, float32)."""
    cos = {s: [[] for _ in range(len(probe.layout.stacks[s]))] for s in probe.stacks}
    for i, batch in enumerate(probe.batches):
        ins, outs, exits = _observe(probe, i, batch)
        for s in probe.stacks:
            n = len(probe.layout.stacks[s])
            for li in range(n):
                h_in = ins[(s, li)]
                h_out = outs[(s, li)] or (ins[(s, li + 1)] if li + 1 < n else exits[s])
                if not h_in or len(h_out) != len(h_in):
                    raise VlapruneError(
                        f"stack {s!r} block {li}: could not observe its input and output "
                        f"({len(h_in)} inputs, {len(h_out)} outputs); similarity scores need both"
                    )
                for a, b in zip(h_in, h_out):
                    c = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
                    cos[s][li].append(c.flatten())
    return {s: [torch.cat(c) for c in per] for s, per in cos.items()}


def block_influence(probe: Probe) -> Scores:
    """ShortGPT's Block Influence: 1 - mean row-wise cos(h_in, h_out)."""
    cos = _cosines(probe)
    return Scores({s: [1.0 - float(c.mean()) for c in per] for s, per in cos.items()})


def angular(probe: Probe) -> Scores:
    """Angular distance arccos(cos(h_in, h_out)) / pi, averaged over all rows."""
    cos = _cosines(probe)
    return Scores(
        {s: [float(torch.arccos(c.clamp(-1, 1)).mean()) / math.pi for c in per] for s, per in cos.items()}
    )


def _span_cosines(probe: Probe, spans: dict[str, int]) -> dict[str, list[float]]:
    """Per stack s and start block j: the mean row-wise cosine between h_j (entering block j) and h_{j+n}
    (leaving block j+n-1), n = spans[s], for every span of n contiguous blocks in the stack."""
    sums: dict[str, list[list[torch.Tensor]]] = {}
    for i, batch in enumerate(probe.batches):
        ins, outs, exits = _observe(probe, i, batch)
        for s in probe.stacks:
            size, n = len(probe.layout.stacks[s]), spans[s]
            per = sums.setdefault(s, [[] for _ in range(max(0, size - n + 1))])
            for j in range(size - n + 1):
                last = j + n - 1
                h_out = outs[(s, last)] or (ins[(s, last + 1)] if last + 1 < size else exits[s])
                if not ins[(s, j)] or len(h_out) != len(ins[(s, j)]):
                    raise VlapruneError(
                        f"stack {s!r} blocks {j}..{last}: could not observe the span's input and output"
                    )
                for a, b in zip(ins[(s, j)], h_out):
                    per[j].append(
                        torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).flatten()
                    )
    return {s: [float(torch.cat(c).mean()) for c in per] for s, per in sums.items()}


def contiguous_cossim(probe: Probe) -> Scores:
    """ShortGPT-style contiguous spans: 1 - mean cos(h_j, h_{j+n}) over spans of n blocks (`--span`).

    A span of `Probe.span` blocks starting at j scores 1 - mean cos(h_j, h_{j+n}) (row-wise, over every
    calibration token), and a block gets the lowest score of
    the spans that contain it, so the blocks of the most redundant span rank last (with n equal to the
    number of blocks you drop, the k lowest-scoring blocks are that span). A stack shorter than the span
    uses one span of its whole length. span 1 is block_influence."""
    if probe.span < 1:
        raise VlapruneError(f"--span={probe.span}: a span holds at least one block")
    spans = {s: min(probe.span, len(probe.layout.stacks[s])) for s in probe.stacks}
    cos = _span_cosines(probe, spans)
    out: dict[str, list[float]] = {}
    for s in probe.stacks:
        size, n = len(probe.layout.stacks[s]), spans[s]
        out[s] = [
            min(1.0 - cos[s][j] for j in range(max(0, i - n + 1), min(i, size - n) + 1)) for i in range(size)
        ]
    return Scores(out, {"span": probe.span})
