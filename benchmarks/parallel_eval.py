"""How much do two closed-loop evaluations on one machine slow each other down?

    .venv/bin/python benchmarks/parallel_eval.py [--episodes 6 --n-envs 2 --task drawer-close-v3]

One run, nothing else on the machine: `vlaprune eval` of the shipped demo policy (MetaWorld, `--episodes`
episodes with `--n-envs` simulator processes), timed as a separate process
  1. alone,
  2. as two identical processes started together (their mean wall time),
each under the thread settings vlaprune uses (evaluate/threads.py: torch sized to the cores, simulator
workers single-threaded; and OMP_WAIT_POLICY=PASSIVE, set by the CLI for commands that run
episodes), without the passive wait policy, with library defaults everywhere ("unsized"), and with
one torch thread per process.
Reports slow-down = paired wall time / alone wall time per setting, and that every run gave the same
per-episode results (same seeds, same episodes, whatever ran beside).
Writes benchmarks/results/parallel_eval.json.
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

ROOT = Path(__file__).resolve().parents[1]


def command(out: Path, args) -> list[str]:
    from vlaprune.experiments.assets import ASSETS, relocated

    return [
        sys.executable,
        "-m",
        "vlaprune.cli",
        "eval",
        f"--policy.path={relocated(ASSETS / 'policy')}",
        "--env.type=metaworld",
        f"--env.task={args.task}",
        f"--eval.n_episodes={args.episodes}",
        f"--eval.n_envs={args.n_envs}",
        f"--output={out}",
    ]


SPIN = {"OMP_WAIT_POLICY": ""}  # empty: libgomp's own default (spin, then sleep), not vlaprune's PASSIVE
SETTINGS = {
    "sized": {},  # what vlaprune does by default: evaluate/threads.py + OMP_WAIT_POLICY=PASSIVE
    "sized_spinning": SPIN,  # evaluate/threads.py only
    "unsized": {"VLAPRUNE_UNSIZED_THREADS": "1", **SPIN},  # library defaults everywhere
    "one_thread": {"VLAPRUNE_THREADS": "1"},  # one torch thread per process
}


def launch(n: int, setting: str, args, tmp: Path) -> tuple[list[float], list[list]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **SETTINGS[setting]}
    outs = [tmp / f"{setting}-{n}-{i}.json" for i in range(n)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(command(o, args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for o in outs
    ]
    times = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"eval failed: {err.decode()[-2000:]}")
        times.append(time.perf_counter() - t0)
    episodes = []
    for o in outs:
        tasks = json.loads(o.read_text())["closed_loop"]["normal"]["tasks"]
        episodes.append(
            [(r["seed"], r["success"], r["steps"]) for t in tasks.values() for r in t["episodes_detail"]]
        )
    return times, episodes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--n-envs", type=int, default=2)
    ap.add_argument("--task", default="drawer-close-v3")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {list(SETTINGS)}")
    args = ap.parse_args()
    results = {}
    seen = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for setting in args.settings.split(","):
            alone, eps1 = launch(1, setting, args, tmp)
            pair, eps2 = launch(2, setting, args, tmp)
            seen += eps1 + eps2
            results[setting] = {
                "alone_s": round(alone[0], 2),
                "paired_s": [round(t, 2) for t in pair],
                "slowdown": round(sum(pair) / len(pair) / alone[0], 2),
            }
            print(setting, results[setting], flush=True)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "what": f"vlaprune eval, demo policy, MetaWorld {args.task}, {args.episodes} episodes, "
        f"n_envs={args.n_envs}",
        "results": results,
        "same_episodes_in_every_run": all(e == seen[0] for e in seen),
    }
    out = ROOT / "benchmarks" / "results" / "parallel_eval.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
