"""Recovery training throughput against lerobot's own training script, same policy, data and batch size.

    .venv/bin/python benchmarks/recover_throughput.py [--steps 20,120 --batch-size 8 --repeats 3]

Both trainers run as separate processes on a random-weight lerobot SmolVLA (text 8x256, vision 4x128,
64x64 images) and a LeRobotDataset written by the script. Each runs twice, for S1 and S2 steps;
the steady-state throughput is (S2 - S1) * batch / (T(S2) - T(S1)) with T the wall time of the whole
process, so start-up (imports, dataset, model build) and the final save cancel out. Reports samples/s of
each and the ratio vlaprune / lerobot (target >= 0.95), per repeat (the four runs of a repeat one after the
other, lerobot and vlaprune alternating) and of the medians over the repeats. Both run under their own
defaults (nothing exported: vlaprune chooses its thread policy per command, evaluate/threads.py).
Writes benchmarks/results/recover_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
BIN = Path(sys.executable).parent


def prepare(tmp: Path) -> tuple[Path, Path]:
    code = f"""
from vlaprune.tiny.smolvla import write_tiny_smolvlm
from vlaprune.tiny.dataset import write_tiny_dataset
write_tiny_smolvlm({str(tmp / "vlm")!r}, text_layers=8, text_hidden=256, vision_layers=4, vision_hidden=128)
write_tiny_dataset({str(tmp / "data")!r}, episodes=8, frames=40)
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, capture_output=True)
    return tmp / "vlm", tmp / "data"


def lerobot_cmd(vlm: Path, data: Path, out: Path, steps: int, bs: int) -> list[str]:
    return [
        str(BIN / "lerobot-train"),
        "--policy.type=smolvla",
        f"--policy.vlm_model_name={vlm}",
        "--policy.load_vlm_weights=false",
        "--policy.resize_imgs_with_padding=[64,64]",
        "--policy.num_vlm_layers=8",
        "--policy.chunk_size=10",
        "--policy.n_action_steps=5",
        "--policy.tokenizer_max_length=16",
        "--policy.max_state_dim=8",
        "--policy.max_action_dim=8",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--dataset.repo_id=local/{data.name}",
        f"--dataset.root={data}",
        f"--batch_size={bs}",
        f"--steps={steps}",
        "--log_freq=1000",
        f"--save_freq={steps}",
        "--num_workers=0",
        "--wandb.enable=false",
        f"--output_dir={out}",
    ]


def vlaprune_cmd(vlm: Path, data: Path, out: Path, steps: int, bs: int, src: Path) -> list[str]:
    return [
        str(BIN / "vlaprune"),
        "recover",
        f"--policy.path={src}",
        f"--dataset.root={data}",
        f"--batch_size={bs}",
        f"--steps={steps}",
        f"--save_every={steps}",
        "--log_every=1000",
        f"--output_dir={out}",
    ]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if "model name" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="20,120")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/recover_throughput.json")
    args = ap.parse_args()
    s1, s2 = (int(x) for x in args.steps.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="vlaprune-thr-"))
    vlm, data = prepare(tmp)
    # the same architecture lerobot-train builds from these flags, saved as a checkpoint for vlaprune
    src = tmp / "src"
    subprocess.run(
        [*lerobot_cmd(vlm, data, src, 1, args.batch_size)], env=ENV, check=True, capture_output=True
    )
    src_ckpt = src / "checkpoints" / "last" / "pretrained_model"
    runs = []
    for _ in range(args.repeats):
        times = {}
        for name in ("lerobot", "vlaprune"):
            for steps in (s1, s2):
                out = tmp / f"{name}-{steps}"
                cmd = (
                    lerobot_cmd(vlm, data, out, steps, args.batch_size)
                    if name == "lerobot"
                    else vlaprune_cmd(vlm, data, out, steps, args.batch_size, src_ckpt)
                )
                times[(name, steps)] = timed(cmd)
                shutil.rmtree(out, ignore_errors=True)
        thr = {
            n: (s2 - s1) * args.batch_size / (times[(n, s2)] - times[(n, s1)])
            for n in ("lerobot", "vlaprune")
        }
        runs.append(
            {
                "wall_s": {f"{n}_{s}": round(t, 2) for (n, s), t in times.items()},
                "samples_per_s": {n: round(v, 2) for n, v in thr.items()},
                "ratio_vlaprune_over_lerobot": round(thr["vlaprune"] / thr["lerobot"], 3),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    median = {n: statistics.median(r["samples_per_s"][n] for r in runs) for n in ("lerobot", "vlaprune")}
    result = {
        "date": date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.machine()}",
        "setup": f"SmolVLA random weights (text 8x256, vision 4x128), batch {args.batch_size}, "
        f"steps {s1} vs {s2}, {args.repeats} repeats, each trainer under its own defaults",
        "samples_per_s_median": {n: round(v, 2) for n, v in median.items()},
        "ratio_of_medians": round(median["vlaprune"] / median["lerobot"], 3),
        "ratio_per_repeat": [r["ratio_vlaprune_over_lerobot"] for r in runs],
        "repeats": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
