"""Where do oneDNN-packed weights (`vlaprune.adapters.packed`) beat `nn.Linear` on the CPU?

    .venv/bin/python benchmarks/packed_linear.py [--threads 1 2 --iters 300]

One run: for each weight shape (in x out, from the demo policy's expert up to a real SmolVLA expert's MLP)
and each row count (chunk x batch of a denoising step: 10, 20, 50), the median of 5 repeats of `iters`
calls each of `F.linear(x, W)` (what `nn.Linear` runs: MKL, re-packing W per call) and of oneDNN's
`_linear_pointwise` on W packed once, at each torch thread count. Ratio = plain / packed time (> 1: packing
pays). `packed.MIN_PACKED` (the smallest group packed) is chosen from this table.
Writes benchmarks/results/packed_linear.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch.nn import functional as F

SHAPES = [(96, 256), (128, 384), (256, 768), (384, 1024), (576, 1536), (384, 3072), (960, 2560), (720, 5760)]
ROWS = [10, 20, 50]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if "model name" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed(fn, iters: int) -> float:
    """Median microseconds per call over 5 repeats of `iters` calls (after a warm-up)."""
    for _ in range(20):
        fn()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        runs.append((time.perf_counter() - t) / iters * 1e6)
    return statistics.median(runs)


def compare(rows: int, k: int, n: int, iters: int) -> dict[str, float]:
    """Plain and packed microseconds per call for a (rows, k) input and a (n, k) weight."""
    w, x = torch.randn(n, k), torch.randn(rows, k)
    pw = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    plain = timed(lambda: F.linear(x, w), iters)
    pack = timed(lambda: torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], ""), iters)
    return {"plain_us": round(plain, 1), "packed_us": round(pack, 1), "ratio": round(plain / pack, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/packed_linear.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rows_out = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for rows in ROWS:
            for k, n in SHAPES:
                row = {"threads": threads, "rows": rows, "in": k, "out": n, "elements": k * n}
                row |= compare(rows, k, n, args.iters)
                rows_out.append(row)
                print(row, flush=True)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "measured": "microseconds per call, median of 5 repeats; ratio = plain / packed (> 1: packing pays)",
        "rows": rows_out,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
