"""Build the demo's assets: MetaWorld demonstrations as a LeRobotDataset, a trained SmolVLA, its evaluation.

    .venv/bin/python scripts/build_demo_assets.py [--episodes 50 --steps 6000]   # ~45 min on 2 CPU cores

1. Demonstrations from MetaWorld's own scripted experts on four tasks, object / goal positions random at
   every reset: executed with N(0, 0.1) action noise, labelled with the clean expert action, capped at 150
   steps, stopped 5 steps after success; failed episodes are dropped. The policy sees the 64x64 `topview`
   camera and hand xyz + gripper only (never object or goal poses) and one instruction per task.
2. A LeRobotDataset of all of it (outside the package, `--work_dir`) for training, and a small one
   (`--ship_episodes` per task, other seeds) shipped in `src/vlaprune/assets/metaworld4/dataset` for the
   demo's calibration, recovery and offline evaluation.
3. A lerobot SmolVLA (random init, the tiny SmolVLM2-architecture backbone below) trained with
   `vlaprune recover` (AdamW, lr 1e-3, cosine, batch 32, +-3 px image shifts, all weights trainable).
4. Closed-loop success per task on unseen seeds (100000+), with the camera live, blanked, and frozen on a
   frame from another seed (the vision probe): the bar is >= 85% average and >= 30 points above the
   vision-ablated policy.
Everything is logged to `src/vlaprune/assets/metaworld4/build_log.txt`; results to `eval.json`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

TASKS = ["button-press-topdown-v3", "drawer-close-v3", "window-open-v3", "button-press-v3"]
ASSETS = Path(__file__).resolve().parents[1] / "src" / "vlaprune" / "assets" / "metaworld4"
FPS = 20


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with (ASSETS / "build_log.txt").open("a") as f:
        f.write(line + "\n")


def record(args: tuple[str, int, int, float]) -> dict:
    """Expert demonstrations of one task: episodes of (pixels, agent_pos, clean action)."""
    task, n, seed0, noise = args
    from vlaprune.evaluate.envs.metaworld import MetaWorldEnv, expert

    env, pol = MetaWorldEnv(task, max_steps=150), expert(task)
    rng = np.random.default_rng(seed0)
    episodes, tried, t0 = [], 0, time.time()
    while len(episodes) < n:
        obs, info = env.reset(seed=seed0 + tried)
        tried += 1
        frames, after = [], None
        for k in range(150):
            a = np.clip(pol.get_action(info["full_obs"]), -1, 1).astype(np.float32)
            frames.append((obs["pixels"], obs["agent_pos"], a))
            obs, _, _, _, info = env.step(np.clip(a + rng.normal(0, noise, 4), -1, 1))
            if info["success"] and after is None:
                after = k
            if after is not None and k >= after + 5:
                break
        if after is not None:
            episodes.append(frames)
    env.close()
    return {
        "task": task,
        "instruction": env.instruction,
        "episodes": episodes,
        "tried": tried,
        "seconds": time.time() - t0,
    }


def write_dataset(root: Path, recorded: list[dict]) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.images.top": {
            "dtype": "image",
            "shape": (64, 64, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
        "action": {"dtype": "float32", "shape": (4,), "names": None},
    }
    ds = LeRobotDataset.create(
        f"local/{root.name}", fps=FPS, features=features, root=root, use_videos=False, image_writer_threads=4
    )
    for rec in recorded:
        for ep in rec["episodes"]:
            for pixels, pos, action in ep:
                ds.add_frame(
                    {
                        "observation.images.top": pixels,
                        "observation.state": pos,
                        "action": action,
                        "task": rec["instruction"],
                    }
                )
            ds.save_episode()
    ds.finalize()


def build_policy(out: Path, train_root: Path) -> Path:
    """The untrained demo policy: lerobot SmolVLA on a tiny SmolVLM2-architecture backbone (~1.3 M params),
    saved with its processors (normalization statistics of the training dataset)."""
    from vlaprune.configs import DatasetConfig
    from vlaprune.data import Data
    from vlaprune.policy import wrap
    from vlaprune.tiny.smolvla import tiny_smolvla, write_tiny_smolvlm

    vlm = write_tiny_smolvlm(
        ASSETS / "vlm", text_layers=4, text_hidden=128, vision_layers=2, vision_hidden=64, patch=8
    )
    policy = tiny_smolvla(vlm, num_vlm_layers=4, chunk_size=10, n_action_steps=5)
    policy.config.vlm_model_name = str(vlm)
    shutil.rmtree(out, ignore_errors=True)
    policy.save_pretrained(out)
    pre, post = Data(wrap(policy), DatasetConfig(root=str(train_root))).processors()
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=50, help="training demonstrations per task")
    ap.add_argument("--ship_episodes", type=int, default=6, help="shipped demonstrations per task")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--eval_episodes", type=int, default=30)
    ap.add_argument("--work_dir", default="build/demo")
    ap.add_argument("--skip_data", action="store_true", help="reuse the datasets in --work_dir / assets")
    ap.add_argument(
        "--eval_only", action="store_true", help="only re-measure eval.json of the shipped policy"
    )
    args = ap.parse_args()
    if args.eval_only:
        evaluate(ASSETS / "policy", args.eval_episodes)
        return
    work = Path(args.work_dir)
    ASSETS.mkdir(parents=True, exist_ok=True)
    log(f"build_demo_assets {vars(args)}; python {sys.version.split()[0]}")
    train_root, ship_root = work / "metaworld4_train", ASSETS / "dataset"
    if not args.skip_data:
        for p in (train_root, ship_root):
            shutil.rmtree(p, ignore_errors=True)
        jobs = [(t, args.episodes, 1000 * (i + 1), 0.1) for i, t in enumerate(TASKS)]
        jobs += [(t, args.ship_episodes, 50_000 + 1000 * i, 0.1) for i, t in enumerate(TASKS)]
        with mp.get_context("spawn").Pool(2) as pool:
            recs = pool.map(record, jobs)
        for r in recs:
            frames = sum(len(e) for e in r["episodes"])
            log(
                f"demos {r['task']}: kept {len(r['episodes'])}/{r['tried']} episodes, {frames} frames, "
                f"{r['seconds']:.0f}s"
            )
        write_dataset(train_root, recs[: len(TASKS)])
        write_dataset(ship_root, recs[len(TASKS) :])
        log(f"datasets written: train {train_root}, shipped {ship_root}")
    init = build_policy(work / "init_policy", train_root)
    from vlaprune.configs import DatasetConfig, PolicyConfig
    from vlaprune.recover.train import RecoverConfig, run

    out = work / "train"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    summary = run(
        RecoverConfig(
            policy=PolicyConfig(path=str(init)),
            dataset=DatasetConfig(root=str(train_root)),
            output_dir=str(out),
            steps=args.steps,
            batch_size=32,
            lr=1e-3,
            trainable="all",
            image_shift=3,
            save_every=1000,
            log_every=100,
            seed=0,
        )
    )
    log(f"trained {args.steps} steps in {(time.time() - t0) / 60:.1f} min: {summary}")
    for line in (out / "train.log").read_text().splitlines():
        row = json.loads(line)
        log(f"  step {row['step']:>5}  loss {row['loss']:.4f}  lr {row['lr']:.2e}")
    policy_dir = ASSETS / "policy"
    shutil.rmtree(policy_dir, ignore_errors=True)
    shutil.copytree(out / "final", policy_dir)
    evaluate(policy_dir, args.eval_episodes)


def evaluate(policy_dir: Path, n: int) -> None:
    from vlaprune.configs import EnvConfig, EpisodesConfig
    from vlaprune.evaluate.run import closed_loop
    from vlaprune.experiments.assets import load_demo_policy

    policy, pre, post = load_demo_policy(policy_dir)
    env = EnvConfig(type="metaworld", task=list(TASKS))
    t0 = time.time()
    res = closed_loop(policy, pre, post, env, EpisodesConfig(n_episodes=n, n_envs=2), vision_probe=True)
    for cond, r in res.items():
        per = ", ".join(
            f"{t} {v['success_rate']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
            for t, v in r["tasks"].items()
        )
        log(f"eval {cond}: mean {r['mean_success']:.3f} ({per})")
    log(f"eval took {(time.time() - t0) / 60:.1f} min")
    setup = {
        "episodes_per_task": n,
        "seeds_from": 100_000,
        "seeded": "scenes and policy noise per episode seed",
    }
    (ASSETS / "eval.json").write_text(json.dumps({**setup, **res}, indent=1))


if __name__ == "__main__":
    main()
