"""Block importance: one function per method, `method(probe) -> Scores`, higher score = keep.

METHODS is the registry a sweep loops over. NEEDS_DATA methods run the calibration loss. `gateprobe` is
the paper's GateProbe; `gateprobe_branch(_abs)` are vlaprune's branch-gate variants (see gateprobe.py). The
metrics the paper compares it with: gradients.py (Taylor x2, Fisher x2, Hessian trace, integrated
gradients), similarity.contiguous_cossim, perplexity.py.
"""

from __future__ import annotations

from collections.abc import Callable

from vlaprune.scoring import ablation, gateprobe, gradients, perplexity, similarity, static
from vlaprune.scoring.probe import Probe, Scores

METHODS: dict[str, Callable[[Probe], Scores]] = {
    "gateprobe": gateprobe.gateprobe,
    "gateprobe_branch": gateprobe.gateprobe_branch,
    "gateprobe_branch_abs": gateprobe.gateprobe_branch_abs,
    "taylor": gradients.taylor,
    "taylor_elementwise": gradients.taylor_elementwise,
    "fisher": gradients.fisher,
    "fisher_params": gradients.fisher_params,
    "hessian_trace": gradients.hessian_trace,
    "integrated_gradients": gradients.integrated_gradients,
    "contiguous_cossim": similarity.contiguous_cossim,
    "perplexity": perplexity.perplexity,
    "loo": ablation.loo,
    "greedy": ablation.greedy,
    "block_influence": similarity.block_influence,
    "angular": similarity.angular,
    "magnitude": static.magnitude,
    "random": static.random,
    "position_last": static.position_last,
    "position_first": static.position_first,
}
NEEDS_DATA = {
    "gateprobe",
    "gateprobe_branch",
    "gateprobe_branch_abs",
    "loo",
    "greedy",
    "block_influence",
    "angular",
    "taylor",
    "taylor_elementwise",
    "fisher",
    "fisher_params",
    "hessian_trace",
    "integrated_gradients",
    "contiguous_cossim",
    "perplexity",
}
BLOCK_ONLY = {"gateprobe", "fisher", "integrated_gradients"}  # methods that refuse granularity "sublayer"
# methods whose sublayer-granularity Scores carry each sublayer's own score (detail["parts"]): what ranks
# attention-only / MLP-only drops
SUBLAYER_METHODS = {"gateprobe_branch", "gateprobe_branch_abs"}

__all__ = ["BLOCK_ONLY", "METHODS", "NEEDS_DATA", "SUBLAYER_METHODS", "Probe", "Scores"]
