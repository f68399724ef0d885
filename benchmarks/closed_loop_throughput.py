"""Closed loop at the simulator's speed? Simulator steps per second of `vlaprune eval`'s closed loop against
the same simulators alone, and against `lerobot-eval` on LIBERO.

    .venv/bin/python benchmarks/closed_loop_throughput.py [--n-envs 2 --mw-episodes 6 --libero-episodes 4]

One run, nothing else on the machine, the same env processes for every measurement of a task:
  MetaWorld (the shipped demo policy, its 4 tasks, vlaprune's 64 px env, episodes capped at 150 steps):
    simulator alone   the same envs stepped with zero actions on the same seeds, each episode as many steps as
                      it took in closed loop (same worker processes, no policy), in messages of n_action_steps
                      actions as the closed loop sends them: the same frames rendered (one per chunk)
    ... every frame   the same, every observation rendered and sent back (what each step cost until the
                      workers skipped rendering the observations inside a chunk: the 2026-12-05 figure)
    closed loop       `rollouts` (what `vlaprune eval` runs), scheduled per env (evaluate/schedule.py)
    grouped           the schedule before (main until 2026-12): groups of n_envs, one select_action per step
  LIBERO (a tiny random SmolVLA with LIBERO's features; libero_spatial/0, 128 px, episodes capped at
  `--libero-steps`): simulator alone and closed loop as above, and `lerobot-eval` (console script,
  --eval.batch_size = n_envs, async envs) with the same policy folder, task, cap, image size and episodes.
CPU (MetaWorld and LIBERO): CPU seconds of this process (the policy and the schedule) during the closed loop
and of the worker processes during the simulator-alone run with the closed loop's messages; their sum over the
cores is the closed loop's ceiling on this machine (`ceiling_steps_per_s`: the steps/s a perfect overlap of
policy and simulators would reach when both only compete for the cores), and `closed_loop_vs_ceiling` says
how much of it the schedule gets.
Steps/s = simulator steps / wall seconds once the simulators are started (lerobot-eval: its own `eval_s`,
which also starts after its envs are made). Success rates are reported side by side; the closed loop and the
grouped schedule must give the same episodes (seed, success, steps).
Writes benchmarks/results/closed_loop_throughput.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIBERO_TASK = "libero_spatial/0"


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def simulator_alone(sims, plan: list[tuple[int, int]], action_dim: int, chunk: int = 0) -> float:
    """Seconds to run every (seed, steps) of `plan` on `sims` with zero actions (the simulator's own speed, no
    policy), each env starting the next episode once free. `chunk` > 0: messages of `chunk` actions without
    frames, as the closed loop sends them (the same messages, the same frames rendered: one per chunk);
    0: all of an episode's steps in one message, every observation rendered and sent back (what every step
    cost before the workers skipped the frames no one looks at)."""
    todo, left = list(plan), [0] * sims.n  # steps env i still has to run in its current episode
    t0 = time.perf_counter()
    for i in range(sims.n):
        if todo:
            seed, left[i] = todo.pop(0)
            sims.send(i, "reset", seed)
    while any(sims.busy):
        for i in sims.ready():
            sims.recv(i)
            if left[i]:
                k = min(chunk, left[i]) if chunk else left[i]
                sims.send(i, "steps", (np.zeros((k, action_dim), np.float32), not chunk))
                left[i] -= k
            elif todo:
                seed, left[i] = todo.pop(0)
                sims.send(i, "reset", seed)
    return time.perf_counter() - t0


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds so far of the processes `pids` (their own, not their children's)."""
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def grouped(policy, pre, post, env_type: str, task: str, seeds: list[int], *, n_envs: int, env_kw: dict):
    """The schedule before this change: groups of n_envs, one batched select_action per step."""
    from vlaprune.evaluate import closed_loop as cl
    from vlaprune.evaluate import envs, schedule, workers

    env = envs.make(env_type, task, **env_kw)
    job = schedule.Job(policy, None, env.instruction, env.max_steps, to_batch=cl.to_batch)
    env.close()
    sims = workers.simulators(functools.partial(envs.make, env_type, task, **env_kw), n_envs)
    with cl.noise_rows(policy) as job.noise:
        return schedule.grouped(job, sims, seeds, lambda b: cl.select(policy, pre, post, b))


def measure_task(
    policy, pre, post, env_type: str, task: str, seeds: list[int], *, args, env_kw: dict
) -> dict:
    """Simulator start-up, closed loop, grouped and simulator alone on one task's simulators."""
    from vlaprune.evaluate import envs, workers
    from vlaprune.evaluate.closed_loop import rollouts
    from vlaprune.evaluate.threads import sized_threads

    factory = functools.partial(envs.make, env_type, task, **env_kw)
    # the width `rollouts` uses (no more envs than episodes), so that it reuses these simulator processes:
    # another width is another cache entry, which may close these (their CPU times then cannot be read)
    width = max(1, min(args.n_envs, len(seeds)))
    t0 = time.perf_counter()
    sims = workers.simulators(factory, width)
    start = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu_s([os.getpid()])
    res = rollouts(policy, pre, post, env_type, task, seeds, n_envs=width, env_kw=env_kw)
    loop = time.perf_counter() - t0
    row = {"start_s": start, "closed_loop_s": loop, "episodes": res}
    row["policy_cpu_s"] = cpu_s([os.getpid()]) - c0
    if args.grouped:
        t0 = time.perf_counter()
        with sized_threads():
            row["grouped_episodes"] = grouped(
                policy, pre, post, env_type, task, seeds, n_envs=width, env_kw=env_kw
            )
        row["grouped_s"] = time.perf_counter() - t0
    dim = sims.local.action_space.shape[0] if sims.local else factory().action_space.shape[0]
    plan = [(r["seed"], r["steps"]) for r in res]
    workers = [proc.pid for proc in sims.procs] or [os.getpid()]
    c0 = cpu_s(workers)
    row["simulator_s"] = simulator_alone(sims, plan, dim, chunk=policy.config.n_action_steps)
    row["simulator_cpu_s"] = cpu_s(workers) - c0
    row["simulator_every_frame_s"] = simulator_alone(sims, plan, dim)
    return row


def summary(rows: dict[str, dict]) -> dict:
    steps = sum(r["steps"] for row in rows.values() for r in row["episodes"])
    eps = [r for row in rows.values() for r in row["episodes"]]
    out = {
        "steps": steps,
        "episodes": len(eps),
        "success_rate": sum(r["success"] for r in eps) / len(eps),
        "simulator_start_s": round(sum(r["start_s"] for r in rows.values()), 2),
    }
    for key in ("simulator", "simulator_every_frame", "closed_loop", "grouped"):
        if all(f"{key}_s" in r for r in rows.values()):
            secs = sum(r[f"{key}_s"] for r in rows.values())
            out[f"{key}_s"] = round(secs, 2)
            out[f"{key}_steps_per_s"] = round(steps / secs, 1)
    for key in ("simulator", "simulator_every_frame"):
        out[f"closed_loop_vs_{key}"] = round(out["closed_loop_steps_per_s"] / out[f"{key}_steps_per_s"], 3)
    for key in ("policy_cpu", "simulator_cpu"):
        out[f"{key}_s"] = round(sum(r[f"{key}_s"] for r in rows.values()), 2)
    cpu = out["policy_cpu_s"] + out["simulator_cpu_s"]
    ceiling = min(steps * (os.cpu_count() or 1) / cpu, out["simulator_steps_per_s"])
    out["ceiling_steps_per_s"] = round(ceiling, 1)
    out["closed_loop_vs_ceiling"] = round(out["closed_loop_steps_per_s"] / ceiling, 3)
    if "grouped_s" in out:
        out["grouped_vs_simulator"] = round(out["grouped_steps_per_s"] / out["simulator_steps_per_s"], 3)
        key = lambda r: (r["seed"], r["success"], r["steps"])  # noqa: E731
        out["same_episodes_as_grouped"] = all(
            [key(r) for r in row["episodes"]] == [key(r) for r in row["grouped_episodes"]]
            for row in rows.values()
        )
    return out


def metaworld(args) -> dict:
    from vlaprune.data import processors
    from vlaprune.evaluate.closed_loop import close_envs
    from vlaprune.experiments.assets import ASSETS, TASKS, relocated
    from vlaprune.policy import load_policy

    policy = load_policy(str(relocated(ASSETS / "policy")))
    pre, post = processors(policy)
    seeds = list(range(100_000, 100_000 + args.mw_episodes))
    rows = {}
    for task in TASKS:
        rows[task] = measure_task(policy.module, pre, post, "metaworld", task, seeds, args=args, env_kw={})
        close_envs()
        print(task, {k: v for k, v in rows[task].items() if k.endswith("_s")}, flush=True)
    return {"policy": "shipped demo SmolVLA (1.27 M parameters)", "tasks": TASKS, **summary(rows)}


def libero_policy(folder: Path) -> Path:
    """A tiny random SmolVLA with LIBERO's features, saved with processors (normalized with a tiny dataset of
    the same features), so that vlaprune and lerobot-eval load the same folder."""
    from vlaprune.configs import DatasetConfig
    from vlaprune.data import Data
    from vlaprune.evaluate.envs import make
    from vlaprune.policy import load_policy
    from vlaprune.tiny.dataset import write_tiny_dataset
    from vlaprune.tiny.smolvla import tiny_smolvla, write_tiny_smolvlm

    cams = ("image", "image2")
    env = make("libero", LIBERO_TASK, image_size=32)
    text = env.instruction
    env.close()
    data = write_tiny_dataset(
        folder / "data", episodes=2, frames=6, state_dim=8, action_dim=7, cameras=cams, tasks=(text,)
    )
    vlm = write_tiny_smolvlm(folder / "vlm")
    tiny_smolvla(vlm, state_dim=8, action_dim=7, cameras=cams).save_pretrained(folder / "policy")
    with Data(
        load_policy(str(folder / "policy")), DatasetConfig(root=str(data))
    ).processors_folder() as procs:
        for f in Path(procs).glob("*"):
            if f.is_file():
                (folder / "policy" / f.name).write_bytes(f.read_bytes())
    return folder / "policy"


def lerobot_eval(policy: Path, args, out: Path) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "lerobot-eval"),
        f"--policy.path={policy}",
        "--env.type=libero",
        f"--env.task={LIBERO_TASK.partition('/')[0]}",
        f"--env.task_ids=[{LIBERO_TASK.partition('/')[2]}]",
        f"--env.episode_length={args.libero_steps}",
        "--env.observation_height=128",
        "--env.observation_width=128",
        f"--eval.n_episodes={args.libero_episodes}",
        f"--eval.batch_size={args.n_envs}",
        "--policy.device=cpu",
        "--seed=100000",
        f"--output_dir={out}",
    ]
    # hf-libero finds its assets only in its package folder or on the hub; lerobot-eval's env workers
    # (forkserver) learn vlaprune's asset tree from a sitecustomize on their PYTHONPATH.
    from vlaprune.evaluate.envs.libero import _lerobot_libero

    _lerobot_libero()  # writes the LIBERO config, sets LIBERO_CONFIG_PATH
    import libero.libero

    site = out.parent / "peer-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import libero.libero\nlibero.libero._assets_path_cache = {libero.libero._assets_path_cache!r}\n"
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path},
        cwd=out.parent,
    )
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"lerobot-eval failed:\n{r.stderr[-3000:]}")
    info = json.loads((out / "eval_info.json").read_text())["overall"]
    steps = args.libero_episodes * args.libero_steps  # every episode runs to the cap (checked: no success)
    return {
        "eval_s": round(info["eval_s"], 2),
        "process_wall_s": round(wall, 2),
        "success_rate": info["pc_success"] / 100,
        "steps": steps,
        "steps_per_s": round(steps / info["eval_s"], 1),
    }


def libero(args, tmp: Path) -> dict:
    from vlaprune.data import processors
    from vlaprune.evaluate.closed_loop import close_envs
    from vlaprune.policy import load_policy

    folder = libero_policy(tmp)
    policy = load_policy(str(folder))
    pre, post = processors(policy)
    seeds = list(range(100_000, 100_000 + args.libero_episodes))
    kw = {"image_size": 128, "max_steps": args.libero_steps}
    rows = {
        LIBERO_TASK: measure_task(
            policy.module, pre, post, "libero", LIBERO_TASK, seeds, args=args, env_kw=kw
        )
    }
    close_envs()
    out = {"policy": "tiny random SmolVLA, LIBERO features", "task": LIBERO_TASK, **summary(rows)}
    peer = lerobot_eval(folder, args, tmp / "lerobot-eval")
    if out["success_rate"] or peer["success_rate"]:
        raise SystemExit("a tiny random policy succeeded: lerobot-eval's step count is not n_episodes x cap")
    out["lerobot_eval"] = peer
    out["closed_loop_vs_lerobot_eval"] = round(out["closed_loop_steps_per_s"] / peer["steps_per_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-envs", type=int, default=2)
    ap.add_argument("--mw-episodes", type=int, default=6, help="episodes per MetaWorld task")
    ap.add_argument("--libero-episodes", type=int, default=4)
    ap.add_argument("--libero-steps", type=int, default=40, help="LIBERO episode cap")
    ap.add_argument("--grouped", type=int, default=1, help="also time the schedule before (1) or not (0)")
    ap.add_argument("--only", default="metaworld,libero")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "closed_loop_throughput.json"))
    args = ap.parse_args()
    from vlaprune.evaluate.threads import cores

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "torch_threads": cores(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "n_envs": args.n_envs,
        "measured": (
            "steps/s of the closed loop (rollouts, scheduled per env) against the same worker processes "
            "stepped with zero actions, once with the closed loop's messages and renders (simulator) and "
            "once rendering every observation (simulator_every_frame); simulator start-up excluded"
        ),
    }
    with tempfile.TemporaryDirectory() as d:
        if "metaworld" in args.only:
            report["metaworld"] = metaworld(args)
            print(json.dumps(report["metaworld"], indent=2), flush=True)
        if "libero" in args.only:
            report["libero"] = libero(args, Path(d))
            print(json.dumps(report["libero"], indent=2), flush=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what the CLI sets for commands that run episodes
    main()
