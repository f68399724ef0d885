"""CPU threads during closed-loop evaluation: torch in the evaluating process sized to the cores it may use,
every simulator worker single-threaded.

Why: a closed-loop step alternates between the policy (one batched torch call in this process) and the
simulators (n_envs worker processes stepping MuJoCo). Workers that each start a full-size OpenMP / BLAS
thread pool, and a torch pool larger than the cores the process may use (a CPU quota, a taskset), put
more runnable threads on the cores than there are cores; OpenMP threads then spin-wait on each other and a
step gets many times slower, worst when two such processes share a machine. So:
  - `cores()`: the CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota;
    `VLAPRUNE_THREADS` overrides it (e.g. 1 per process when several evaluations share the cores).
  - `sized_threads()`: torch intra-op threads = `cores()` while the evaluation runs, restored afterwards;
    `rollout_threads(workers)`: the cores the simulator workers leave free (at least 1), since the policy's
    calls now overlap the workers' stepping (evaluate/schedule.py). Measured on 2 cores with the demo policy
    and 2 MetaWorld workers under OMP_WAIT_POLICY=PASSIVE: a chunk took 35 ms with 1 thread and 88 ms with 2
    (closed loop 116 vs 51 steps/s; the same episodes).
  - `single_threaded_children()`: processes started while it is active (the simulator workers, spawned)
    inherit OMP / MKL / OpenBLAS / numexpr at one thread each.
`VLAPRUNE_UNSIZED_THREADS=1` turns both off (library defaults everywhere), for benchmarks/parallel_eval.py.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from vlaprune.errors import VlapruneError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def cores() -> int:
    """CPUs this process may run on: `VLAPRUNE_THREADS` if set, else the affinity mask capped by the cgroup
    v2 CPU quota (/sys/fs/cgroup/cpu.max, a container's limit), at least 1."""
    env = os.environ.get("VLAPRUNE_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise VlapruneError(f"VLAPRUNE_THREADS={env!r}: give a whole number of threads >= 1")
        return int(env)
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def rollout_threads(workers: int) -> int:
    """torch threads for closed-loop rollouts beside `workers` simulator processes (0: the simulator runs in
    this process, taking turns with the policy): `cores()` less one per worker, at least 1;
    `VLAPRUNE_THREADS` as given when set."""
    if os.environ.get("VLAPRUNE_THREADS", "").strip():
        return cores()
    return max(1, cores() - workers)


@contextlib.contextmanager
def sized_threads(n: int | None = None) -> Iterator[int]:
    """While active, torch uses `n` intra-op threads (default `cores()`); yields the number used."""
    if os.environ.get("VLAPRUNE_UNSIZED_THREADS"):
        yield torch.get_num_threads()
        return
    n = n or cores()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """While active, child processes start with one OpenMP / BLAS thread (their environment is inherited at
    start; this process's own pools are already built and keep their size)."""
    if os.environ.get("VLAPRUNE_UNSIZED_THREADS"):
        yield
        return
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: "1" for k in THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
