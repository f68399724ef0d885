"""What GateProbe costs next to a plain forward+backward, and how well it agrees with leave-one-out.

    .venv/bin/python benchmarks/gateprobe_cost.py [--text-layers 8 --text-hidden 256 --batches 4]

One run, one model (a random-weight lerobot SmolVLA of the given size, all three stacks scored), the same
calibration batches for every method. Reports, as ratios measured in this run:
  GateProbe (the paper's, `gateprobe`) wall time / one plain forward+backward (weights requiring grad, as in
  training) over the batches; the same for vlaprune's branch-gate variant `gateprobe_branch`
  leave-one-out wall time / the same
  rank agreement (Spearman, Kendall) of each with leave-one-out, per stack and over all blocks
Writes benchmarks/results/gateprobe_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vlaprune.adapters import layout  # noqa: E402
from vlaprune.configs import DatasetConfig  # noqa: E402
from vlaprune.data import Data, policy_loss  # noqa: E402
from vlaprune.policy import wrap  # noqa: E402
from vlaprune.scoring import METHODS, Probe  # noqa: E402
from vlaprune.scoring.score import agreement  # noqa: E402
from vlaprune.tiny.dataset import write_tiny_dataset  # noqa: E402
from vlaprune.tiny.smolvla import tiny_smolvla, write_tiny_smolvlm  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text-layers", type=int, default=8)
    ap.add_argument("--text-hidden", type=int, default=256)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--vision-hidden", type=int, default=128)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/gateprobe_cost.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="vlaprune-bench-"))
    vlm = write_tiny_smolvlm(
        tmp / "vlm",
        text_layers=args.text_layers,
        text_hidden=args.text_hidden,
        vision_layers=args.vision_layers,
        vision_hidden=args.vision_hidden,
    )
    policy = tiny_smolvla(vlm, num_vlm_layers=args.text_layers)
    data = write_tiny_dataset(tmp / "data", episodes=4, frames=25)
    batches = Data(wrap(policy), DatasetConfig(root=str(data))).batches(args.batches, args.batch_size, 0)
    loss = policy_loss(policy, 0)
    lay = layout(policy)
    probe = Probe(lay, list(lay.stacks), batches, loss)
    n_blocks = sum(len(s) for s in lay.stacks.values())

    def plain():
        for p in policy.parameters():
            p.requires_grad_(True)
            p.grad = None
        for i, b in enumerate(batches):
            (loss(i, b) / len(batches)).backward()
        for p in policy.parameters():
            p.grad = None

    plain()  # warm-up
    t_plain = timed(plain, args.repeats)
    t_gp = timed(lambda: METHODS["gateprobe"](probe), args.repeats)
    t_branch = timed(lambda: METHODS["gateprobe_branch"](probe), args.repeats)
    t0 = time.perf_counter()
    loo = METHODS["loo"](probe)
    t_loo = time.perf_counter() - t0
    gp = METHODS["gateprobe"](probe)
    branch = METHODS["gateprobe_branch"](probe)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "model": f"SmolVLA random weights, {sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M params, "
        f"{n_blocks} blocks ({', '.join(f'{k} {len(s)}' for k, s in lay.stacks.items())})",
        "calibration": f"{args.batches} batches x {args.batch_size} frames",
        "plain_fwd_bwd_s": round(t_plain, 4),
        "gateprobe_s": round(t_gp, 4),
        "gateprobe_branch_s": round(t_branch, 4),
        "loo_s": round(t_loo, 4),
        "gateprobe_over_plain": round(t_gp / t_plain, 3),
        "gateprobe_branch_over_plain": round(t_branch / t_plain, 3),
        "loo_over_plain": round(t_loo / t_plain, 3),
        "loo_forward_passes_per_batch": n_blocks + 1,
        "agreement_gateprobe_vs_loo": agreement(gp.blocks, loo.blocks),
        "agreement_gateprobe_branch_vs_loo": agreement(branch.blocks, loo.blocks),
    }
    result["metrics"] = metric_set(probe, loo, t_plain)
    result["diagnosis"] = diagnose(probe, batches, loss, lay)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def metric_set(probe: Probe, loo, t_plain: float) -> dict:
    """Every data-driven metric of the paper's comparison: seconds / plain, agreement with leave-one-out."""
    out = {}
    probe.probes, probe.ig_steps, probe.span = 4, 4, 2
    for m in (
        "taylor",
        "taylor_elementwise",
        "fisher",
        "fisher_params",
        "hessian_trace",
        "integrated_gradients",
        "contiguous_cossim",
        "block_influence",
    ):
        t0 = time.perf_counter()
        sc = METHODS[m](probe)
        secs = time.perf_counter() - t0
        out[m] = {
            "over_plain": round(secs / t_plain, 3),
            "agreement_with_loo": agreement(sc.blocks, loo.blocks),
        }
    return out


def diagnose(probe: Probe, batches, loss, lay) -> dict:
    """Why GateProbe and leave-one-out disagree on some stack: per block, GateProbe, the signed first-order
    prediction of the loss change when the block goes (-mean dL/da), the exact change (loo); and each method's
    split-half stability (Spearman between the scores of the first and the second half of the batches)."""
    from vlaprune.scoring.gateprobe import example_gradients

    grads = example_gradients(probe)
    loo = METHODS["loo"](probe).blocks
    gp = METHODS["gateprobe"](probe).blocks
    half = len(batches) // 2
    halves = [Probe(lay, probe.stacks, batches[:half], loss), Probe(lay, probe.stacks, batches[half:], loss)]
    # the second half's loss must see its own batch indices' noise: shift them
    halves[1] = Probe(lay, probe.stacks, batches[half:], lambda i, b: loss(i + half, b))
    split = {}
    for m in ("gateprobe", "loo"):
        a, b = (METHODS[m](h).blocks for h in halves)
        split[m] = agreement(a, b)
    out = {"split_half_agreement": split, "blocks": {}}
    for s in probe.stacks:
        out["blocks"][s] = [
            {
                "gateprobe": round(gp[s][i], 6),
                "first_order_change": round(-float(grads[(s, i)].mean()), 6),
                "loo_change": round(loo[s][i], 6),
            }
            for i in range(len(lay.stacks[s]))
        ]
    return out


if __name__ == "__main__":
    main()
