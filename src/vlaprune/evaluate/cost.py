"""What a model costs at run time: `select_action` latency and peak memory, and the cost report.

Memory: `peak_memory_bytes` is the growth of one inference call above the level before it;
`inference_memory` is what one inference holds in all (weights + activations, the DTR paper's 14.4 -> 8.36
GB): on CUDA torch.cuda.max_memory_allocated during the call, on CPU the weights' bytes + that growth (its
`how` says which).

Latency: `select_action` with the policy's action queue emptied before every call (`reset()`), so every
call runs one full inference (prefix + denoising): the latency the robot sees when a new chunk is due.
For transformers models it is one forward on the example inputs. Parameters and FLOPs come from the
anatomy (`vlaprune.adapters.anatomy`, torch's own FLOP counter on real passes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlaprune.adapters import is_lerobot
from vlaprune.adapters.anatomy import anatomy
from vlaprune.adapters.counting import count_flops
from vlaprune.adapters.lerobot.batch import example_batch
from vlaprune.adapters.stack import Layout


def latency(fn: Callable[[], Any], n: int = 20, warmup: int = 3) -> dict[str, float]:
    """Wall time of `fn()` after `warmup` calls: median and p90 over `n` calls, in milliseconds."""
    import statistics
    import time

    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(n - 1, int(0.9 * n))], "n": n}


def latency_ratio(
    original: Callable[[], Any], cut: Callable[[], Any], rounds: int = 20, warmup: int = 3
) -> float:
    """Median wall time of `cut()` / median of `original()`, timed in interleaved rounds (each once per
    round, after `warmup` calls of each), so that drift of the machine hits both alike: the per-action
    latency ratio of a cut (its inverse is the per-action speed-up)."""
    import statistics
    import time

    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.no_grad():
        for _ in range(warmup):
            original()
            cut()
        for _ in range(rounds):
            for i, fn in enumerate((original, cut)):
                t0 = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - t0)
    return statistics.median(times[1]) / statistics.median(times[0])


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak extra memory of one `fn()` call in bytes: CUDA allocator peak on GPU; on CPU the peak resident
    set size above the level before the call, sampled every millisecond by a watcher thread."""
    return memory(fn, device)[0]


def memory(fn: Callable[[], Any], device: torch.device) -> tuple[int, int | None]:
    """(growth, CUDA total) of one `fn()` call in bytes: the peak above the level before the call (see
    `peak_memory`) and, on CUDA, torch.cuda.max_memory_allocated during it (everything the allocator holds
    at the peak: weights, activations, anything else on the device); None on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            fn()
        torch.cuda.synchronize(device)
        total = int(torch.cuda.max_memory_allocated(device))
        return total - int(start), total
    import threading

    import psutil

    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.001)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        with torch.no_grad():
            fn()
    finally:
        done.set()
        t.join()
    return int(max(peak[0], proc.memory_info().rss) - start), None


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each tensor counted once)."""
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


def inference_memory(fn: Callable[[], Any], model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """The memory one inference holds, as the DTR paper reports it (14.4 -> 8.36 GB: weights + activations),
    beside the growth of the call alone. On CUDA the total is torch.cuda.max_memory_allocated during one call;
    on CPU it is the weights' bytes + the peak resident-set growth of one call. `how` names which."""
    growth, total = memory(fn, device)
    weights = weight_bytes(model)
    if total is None:
        how = "CPU: parameter + buffer bytes + peak RSS growth of one inference call"
        total = weights + growth
    else:
        how = "CUDA: torch.cuda.max_memory_allocated during one inference call"
    return {"total_bytes": total, "weights_bytes": weights, "growth_bytes": growth, "how": how}


def inference_call(layout: Layout):
    """A no-argument call that runs one full inference (what latency and peak memory are measured on)."""
    model = layout.model
    if is_lerobot(model):
        batch = example_batch(model, 1)

        def run():
            model.reset()
            return model.select_action(dict(batch))

        return run
    return layout.forward


def cost(layout: Layout, n_calls: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Measure one model. All FLOPs come from torch's counter on real passes (see evaluate.cost)."""
    model = layout.model
    model.eval()
    anat = anatomy(layout)
    by_comp: dict[str, int] = {}
    for s in anat["stacks"]:
        by_comp[s["component"]] = by_comp.get(s["component"], 0) + s["params"]
    for r in anat["parts"]:
        by_comp[r["component"]] = by_comp.get(r["component"], 0) + r["params"]
    by_comp["other"] = anat["other"]["params"]
    fwd = layout.training_forward
    flops_forward = sum(count_flops(model, fwd, {}).values()) if fwd else None
    act = inference_call(layout)
    device = next(model.parameters()).device
    return {
        "params": anat["total_params"],
        "params_by_component": by_comp,
        "blocks": {s["name"]: s["blocks"] for s in anat["stacks"]},
        "flops_forward": flops_forward,
        "flops_chunk": anat["total_flops"],
        "flops_chunk_pass": anat["flops_pass"],
        "latency": latency(act, n_calls, warmup) if act else None,
        **_memory(act, model, device),
    }


def _memory(act: Callable[[], Any] | None, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """cost()'s memory entries: the growth of one call (peak_memory_bytes) and the total it holds."""
    if act is None:
        return {"peak_memory_bytes": None, "inference_memory": None}
    mem = inference_memory(act, model, device)
    return {"peak_memory_bytes": mem["growth_bytes"], "inference_memory": mem}


def cost_table(before: dict[str, Any], after: dict[str, Any]):
    """A rich Table: each measure for the original, the pruned model, and pruned / original."""
    from rich.table import Table

    def rows(c: dict[str, Any]) -> dict[str, float | None]:
        lat = c["latency"] or {}
        out = {"params": c["params"]}
        out |= {f"params {k}": v for k, v in c["params_by_component"].items()}
        out |= {f"blocks {k}": v for k, v in c["blocks"].items()}
        out |= {
            "FLOPs per forward (loss)": c["flops_forward"],
            "FLOPs per action chunk": c["flops_chunk"],
            "select_action median ms": lat.get("median_ms"),
            "select_action p90 ms": lat.get("p90_ms"),
            "peak memory MB": None if c["peak_memory_bytes"] is None else c["peak_memory_bytes"] / 2**20,
        }
        mem = c.get("inference_memory") or {}
        out["inference memory MB (weights + activations)"] = mem["total_bytes"] / 2**20 if mem else None
        return out

    def fmt(v: float | None) -> str:
        if v is None:
            return "-"
        if isinstance(v, int) or float(v).is_integer():
            return f"{int(v):,}"
        return f"{v:.2f}"

    b, a = rows(before), rows(after)
    t = Table(title="cost: original vs pruned", title_justify="left")
    for col in ("measure", "original", "pruned", "pruned / original"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for k in b:
        ratio = "-" if not b[k] or a.get(k) is None else f"{a[k] / b[k]:.3f}"
        t.add_row(k, fmt(b[k]), fmt(a.get(k)), ratio)
    return t
