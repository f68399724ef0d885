"""Streaming dW on two multi-GB checkpoints: peak memory and throughput against a plain sequential read.

    .venv/bin/python benchmarks/diverge_stream.py [--layers 5 --hidden 4096 --ffn 11008]

Writes two synthetic Llama-shaped bf16 checkpoints (sharded, with an index) of ~2 GB each, the second a
perturbed copy of the first; then in one run: (1) a plain sequential read of both (64 MB reads),
(2) `compare` in a fresh process whose peak RSS is sampled every 2 ms, relative to its RSS after imports.
Reports peak RSS above the interpreter (target < 1.5 GB) and throughput as a fraction of the plain read
(target >= 50%). Both run with the files in the page cache (they were just written: 24 GiB RAM).
Writes benchmarks/results/diverge_stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, threading, time, psutil
from vlaprune.scoring.diverge import DivergeConfig, compare
p = psutil.Process(); base = p.memory_info().rss; peak = [base]; stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], p.memory_info().rss); stop.wait(0.002)
t = threading.Thread(target=watch); t.start()
t0 = time.perf_counter()
m = compare(DivergeConfig(base=sys.argv[1], tuned=sys.argv[2], chunk_mb=int(sys.argv[3])), progress=False)
dt = time.perf_counter() - t0
stop.set(); t.join()
print(json.dumps({"rss_after_imports": base, "peak_rss": peak[0], "seconds": dt, "tensors": len(m["pairs"])}))
"""


def write_checkpoint(folder: Path, layers: int, hidden: int, ffn: int, seed: int, perturb: bool) -> int:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, hidden),
        "self_attn.v_proj": (hidden, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (ffn, hidden),
        "mlp.up_proj": (ffn, hidden),
        "mlp.down_proj": (hidden, ffn),
    }
    weight_map, total = {}, 0
    for i in range(layers):
        shard = {}
        for name, shape in shapes.items():
            w = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
            if perturb:
                w[::97] += 0.01
            shard[f"model.layers.{i}.{name}.weight"] = w
        fname = f"model-{i:05d}-of-{layers:05d}.safetensors"
        save_file(shard, folder / fname)
        total += (folder / fname).stat().st_size
        weight_map.update({k: fname for k in shard})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return total


def plain_read(folders: list[Path]) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for folder in folders:
        for f in sorted(folder.glob("*.safetensors")):
            with f.open("rb", buffering=0) as fh:
                while chunk := fh.read(64 * 2**20):
                    n += len(chunk)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--chunk-mb", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/diverge_stream.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vlaprune-div-", dir=os.environ.get("TMPDIR", "/tmp")))
    try:
        size_a = write_checkpoint(tmp / "base", args.layers, args.hidden, args.ffn, 0, False)
        size_b = write_checkpoint(tmp / "tuned", args.layers, args.hidden, args.ffn, 0, True)
        plain_read([tmp / "base", tmp / "tuned"])  # warm the page cache equally for both measurements
        n, t_plain = plain_read([tmp / "base", tmp / "tuned"])
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp / "base"), str(tmp / "tuned"), str(args.chunk_mb)],
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    gb = 2**30
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "checkpoints": f"2 x {size_a / gb:.2f} GiB bf16, {args.layers} shards, Llama-shaped "
        f"(hidden {args.hidden}, ffn {args.ffn}), chunk {args.chunk_mb} MB",
        "plain_read_gib_per_s": round(n / t_plain / gb, 3),
        "diverge_gib_per_s": round((size_a + size_b) / child["seconds"] / gb, 3),
        "throughput_fraction_of_plain_read": round(((size_a + size_b) / child["seconds"]) / (n / t_plain), 3),
        "peak_rss_above_interpreter_gib": round((child["peak_rss"] - child["rss_after_imports"]) / gb, 3),
        "tensors": child["tensors"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
