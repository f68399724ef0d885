"""GateProbe at full model scale on a CPU machine: SmolVLA (SmolVLM2-500M) and pi0 / pi0.5 (gemma_2b +
gemma_300m, ~4 B), random weights built offline (vlaprune.tiny.full_size): SmolVLA in fp32, pi0 / pi0.5 in
fp32 or with lerobot's `dtype="bfloat16"` (`--dtype bf16`, vision path fp32).

    .venv/bin/python benchmarks/gateprobe_fullscale.py --model smolvla [--batches 2 --batch-size 1]
    .venv/bin/python benchmarks/gateprobe_fullscale.py --model pi0 --dtype fp32 --batches 1 --phases inference

For the chosen model, three phases, each in a fresh process (so each one's peak RSS is its own), on the same
calibration batches (`adapters.lerobot.batch`, model-ready tensors):
  inference   the loss forward under no_grad, and one `select_action`
  fwd_bwd     one plain forward + backward with every parameter frozen: the stacks' first-block inputs are
              made leaves that require grad, so the backward runs through every block (activation
              gradients only, no weight gradients), as GateProbe's does
  gateprobe   the paper's GateProbe over every stack (`scoring.gateprobe.gateprobe`)
Reported: seconds per calibration example (the phase's wall time / examples, after building the model),
peak RSS of the phase (sampled every 10 ms while it runs) and of the whole process (ru_maxrss, which
includes the model build), and GateProbe / fwd_bwd. Goals from the issue: GateProbe within 1.5x of the
plain forward + backward; full pi0 GateProbe within 20 GB peak RSS. Writes
benchmarks/results/gateprobe_fullscale_<model>_<dtype>.json (phases not re-run are kept from the file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHASES = ("inference", "fwd_bwd", "gateprobe")


def build(model: str, dtype: str):
    from vlaprune.tiny.full_size import full_pi, full_smolvla

    if model == "smolvla":
        return full_smolvla()
    return full_pi(model, torch.bfloat16 if dtype == "bf16" else torch.float32)


class RSSSampler:
    """Peak resident set size of this process while active (psutil, every 10 ms)."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self) -> RSSSampler:
        def loop():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.01)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def phase(model: str, name: str, n: int, size: int, dtype: str) -> dict:
    from vlaprune.adapters import layout
    from vlaprune.data import policy_loss
    from vlaprune.scoring import Probe
    from vlaprune.scoring.gateprobe import gateprobe
    from vlaprune.scoring.gates import branch_modules
    from vlaprune.scoring.probe import weights_frozen
    from vlaprune.tiny.full_size import calibration_batches

    t0 = time.perf_counter()
    policy = build(model, dtype)
    build_s = time.perf_counter() - t0
    data = calibration_batches(policy, n, size)
    loss = policy_loss(policy, 0)
    lay = layout(policy)
    params = sum(p.numel() for p in policy.parameters())
    with RSSSampler() as rss:
        t0 = time.perf_counter()
        if name == "inference":
            with torch.no_grad():
                for i, b in enumerate(data):
                    loss(i, b)
                policy.reset()
                one = {k: v[:1] for k, v in data[0].items() if not k.startswith("action")}
                policy.select_action(one)
        elif name == "fwd_bwd":
            hooks = []

            def make_leaf(m, args):
                return (args[0].detach().requires_grad_(True), *args[1:])

            for s in lay.stacks:
                hooks.append(branch_modules(lay, s)[0]["entry"].register_forward_pre_hook(make_leaf))
            try:
                with weights_frozen(policy):
                    for i, b in enumerate(data):
                        loss(i, b).backward()
            finally:
                for h in hooks:
                    h.remove()
        else:
            gateprobe(Probe(lay, list(lay.stacks), data, loss, 0))
        secs = time.perf_counter() - t0
    return {
        "phase": name,
        "params": params,
        "build_s": round(build_s, 1),
        "seconds": round(secs, 2),
        "seconds_per_example": round(secs / (n * size), 2),
        "phase_peak_rss_gb": round(rss.peak / 2**30, 2),
        "process_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smolvla", "pi0", "pi05"], default="smolvla")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    # pi0 / pi0.5 parameters: fp32, or lerobot's dtype=bfloat16 (on a CPU without native bf16 matmuls the
    # bf16 backward is far slower: measured, see the README)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: one phase, JSON out
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.model, args.phase, args.batches, args.batch_size, args.dtype)))
        return
    path = Path(f"benchmarks/results/gateprobe_fullscale_{args.model}_{args.dtype}.json")
    # phases not re-run are kept from an earlier run on the same calibration (each phase is its own process
    # anyway); "phases_run_together" says which ones this run measured
    earlier = json.loads(path.read_text()) if path.exists() else {}
    same = earlier.get("calibration") == f"{args.batches} batches x {args.batch_size} example(s)"
    results = dict(earlier.get("phases", {})) if same else {}
    for name in args.phases.split(","):
        cmd = [sys.executable, __file__, f"--model={args.model}", f"--phase={name}", f"--dtype={args.dtype}"]
        cmd += [f"--batches={args.batches}", f"--batch-size={args.batch_size}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    gp, fb = results.get("gateprobe"), results.get("fwd_bwd")
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {_ram_gb()} GB RAM, "
        f"torch {torch.__version__}",
        "model": f"{args.model} full size, random weights, "
        f"{'bf16 (vision fp32)' if args.dtype == 'bf16' and args.model != 'smolvla' else 'fp32'} parameters, "
        f"{next(iter(results.values()))['params'] / 1e6:.0f} M params",
        "calibration": f"{args.batches} batches x {args.batch_size} example(s)",
        "phases": {k: results[k] for k in PHASES if k in results},
        "phases_run_together": args.phases.split(","),
        "gateprobe_over_fwd_bwd": round(gp["seconds"] / fb["seconds"], 3) if gp and fb else None,
        "goal_gateprobe_within_1_5x": gp["seconds"] <= 1.5 * fb["seconds"] if gp and fb else None,
        "goal_pi0_under_20_gb": gp["process_peak_rss_gb"] <= 20 if gp and args.model != "smolvla" else None,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _ram_gb() -> int:
    import psutil

    return round(psutil.virtual_memory().total / 2**30)


import torch  # noqa: E402  (after HF_HUB_OFFLINE is set)

if __name__ == "__main__":
    main()
