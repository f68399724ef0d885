"""`vlaprune eval`: offline metrics on held-out episodes and / or closed-loop success in a simulator,
with the language- and vision-sensitivity probes.

    vlaprune eval --policy.path=out/recover/final --dataset.root=data/mw --eval.offline=true --eval.holdout=.2
    vlaprune eval --policy.path=... --env.type=metaworld --env.task=reach-v3,drawer-close-v3 \
        --eval.n_episodes=30 --eval.language_probe=true --eval.vision_probe=true
    vlaprune eval --policy.path=... --env.type=libero --env.task=libero_spatial --eval.n_episodes=10

Tasks are comma-separated; a LIBERO suite name stands for all its tasks (`libero_spatial/3` is one of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaprune.adapters.load import load_model
from vlaprune.atomic import write_json_atomic
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.evaluate import envs
from vlaprune.evaluate.closed_loop import (
    CAMERA_PROBES,
    INSTRUCTION_PROBES,
    probe_instruction,
    rollouts,
    summarize,
)
from vlaprune.evaluate.offline import held_out, offline_eval
from vlaprune.scoring.calibration import DatasetConfig, load_dataset, pre_post


@dataclass
class EnvConfig:
    # Simulator: metaworld | pusht | libero. Tasks comma-separated: MetaWorld names (reach-v3,door-open-v3);
    # PushT-v0; LIBERO suites (libero_spatial, libero_object, libero_goal, libero_10, libero_90: every task
    # of the suite) or single LIBERO tasks SUITE/ID (libero_spatial/3, ids from 0).
    type: str = ""
    task: str = ""
    # Episode cap (default: the env's own: MetaWorld 150, PushT 300, LIBERO lerobot's per suite, e.g. 280).
    max_steps: int = 0
    # Camera image side in pixels (default: the env's own: MetaWorld 64, PushT 96, LIBERO 256).
    image_size: int = 0


@dataclass
class EvalOptions:
    offline: bool = False
    # Offline: fraction of episodes held out at the end of the dataset (or pass --dataset.episodes).
    holdout: float = 0.0
    batch_size: int = 8
    max_batches: int = 0
    # Closed loop: episodes per task, first seed (unseen by demonstration recording), parallel envs.
    n_episodes: int = 10
    seed: int = 100_000
    n_envs: int = 1
    language_probe: bool = False
    vision_probe: bool = False
    video_dir: str = ""


@dataclass
class EvalConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)
    output: str = "eval.json"

    def __post_init__(self) -> None:
        if not self.eval.offline and not self.env.type:
            raise VlapruneError(
                f"nothing to evaluate: pass --eval.offline=true and/or --env.type={'|'.join(envs.ENVS)}"
            )
        if self.env.type and self.env.type not in envs.ENVS:
            raise VlapruneError(f"unknown --env.type={self.env.type!r}; choose one of {', '.join(envs.ENVS)}")
        if self.env.type and not self.env.task:
            raise VlapruneError("--env.task is required with --env.type (comma-separated task names)")
        if self.env.type and self.eval.n_episodes < 1:
            raise VlapruneError(f"--eval.n_episodes={self.eval.n_episodes}: need at least one episode")


def task_instructions(cfg: EvalConfig) -> dict[str, str]:
    """Each single task's instruction (suites expanded into their tasks); building the envs also validates
    the task names. Building an env starts no simulator (MetaWorld: a model load; LIBERO: nothing)."""
    names = [t.strip() for t in cfg.env.task.split(",") if t.strip()]
    out = {}
    for t in (single for name in names for single in envs.tasks(cfg.env.type, name)):
        env = envs.make(cfg.env.type, t)
        out[t] = env.instruction
        env.close()
    return out


def env_kwargs(cfg: EnvConfig) -> dict[str, int]:
    """The env's keyword arguments that the flags set (unset flags keep each env's defaults)."""
    return {k: v for k, v in (("max_steps", cfg.max_steps), ("image_size", cfg.image_size)) if v}


def closed_loop(policy, pre, post, cfg: EvalConfig, progress=None) -> dict[str, Any]:
    """Success per task (and per probe), each with its Wilson interval; the mean over tasks. Tasks are the
    outer loop, so each task's simulators serve all its conditions and can then make room for the next."""
    instructions = task_instructions(cfg)
    tasks = list(instructions)
    env_kw = env_kwargs(cfg.env)
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.n_episodes))
    conditions: list[tuple[str, dict]] = [("normal", {})]
    if cfg.eval.language_probe:
        conditions += [(f"instruction:{m}", {"instruction_mode": m}) for m in INSTRUCTION_PROBES]
    if cfg.eval.vision_probe:
        conditions += [(f"camera:{m}", {"camera": m}) for m in CAMERA_PROBES]
    per_task: dict[str, dict[str, Any]] = {name: {} for name, _ in conditions}
    others = sorted(set(instructions.values())) + ["pick up the red cube and place it in the bowl"]
    for t in tasks:
        for name, cond in conditions:
            text = probe_instruction(instructions[t], cond.get("instruction_mode"), others, seed=len(t))
            res = rollouts(
                policy,
                pre,
                post,
                cfg.env.type,
                t,
                seeds,
                n_envs=cfg.eval.n_envs,
                instruction=text,
                camera=cond.get("camera"),
                env_kw=env_kw,
                video_dir=cfg.eval.video_dir or None if name == "normal" else None,
                progress=progress,
            )
            per_task[name][t] = {**summarize(res), "instruction": text, "episodes_detail": res}
    out: dict[str, Any] = {}
    for name, rows in per_task.items():
        out[name] = {"mean_success": sum(v["success_rate"] for v in rows.values()) / len(rows), "tasks": rows}
    base = out["normal"]["mean_success"]
    for name in out:
        out[name]["change_vs_normal"] = out[name]["mean_success"] - base
    return out


def run(cfg: EvalConfig) -> dict[str, Any]:
    from rich.console import Console
    from tqdm.auto import tqdm

    policy = load_model(cfg.policy.path, cfg.policy.trust_remote_code, cfg.policy.device)
    if not hasattr(getattr(policy, "config", None), "input_features"):
        raise VlapruneError("evaluation runs lerobot policies")
    path = cfg.policy.path if Path(cfg.policy.path).is_dir() else None
    result: dict[str, Any] = {"policy": cfg.policy.path}
    dataset = load_dataset(policy, cfg.dataset) if (cfg.dataset.repo_id or cfg.dataset.root) else None
    if cfg.eval.offline:
        if dataset is None:
            raise VlapruneError("--eval.offline needs a dataset: --dataset.repo_id / --dataset.root")
        ds_cfg = held_out(cfg.dataset, policy, cfg.eval.holdout)
        result["offline"] = offline_eval(
            policy, ds_cfg, batch_size=cfg.eval.batch_size, max_batches=cfg.eval.max_batches, policy_path=path
        )
    if cfg.env.type:
        pre, post = pre_post(policy, dataset, path)
        n_tasks = len(task_instructions(cfg))
        n_cond = (
            1 + len(INSTRUCTION_PROBES) * cfg.eval.language_probe + len(CAMERA_PROBES) * cfg.eval.vision_probe
        )
        with tqdm(total=n_tasks * n_cond * cfg.eval.n_episodes, desc="episodes") as bar:
            result["closed_loop"] = closed_loop(policy, pre, post, cfg, progress=bar.update)
        result["closed_loop_setup"] = {
            "env": cfg.env.type,
            "seeds_from": cfg.eval.seed,
            "n_episodes": cfg.eval.n_episodes,
        }
    Console(width=max(Console().width, 100)).print(table(result))
    write_json_atomic(cfg.output, result)
    print(f"wrote {cfg.output}")
    return result


def table(result: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"evaluation of {result['policy']}", title_justify="left")
    for c in ("measure", "value", "95% CI / detail"):
        t.add_column(c)
    if "offline" in result:
        o = result["offline"]
        t.add_row("offline loss", f"{o['loss']:.4f}", f"{o['frames']} frames")
        t.add_row(
            "action L1 (normalized)",
            f"{o['l1']:.4f}",
            "per dim " + ", ".join(f"{x:.3f}" for x in o["l1_per_dim"]),
        )
        t.add_row("action MSE (normalized)", f"{o['mse']:.4f}", "")
    for cond, r in result.get("closed_loop", {}).items():
        for task, v in r["tasks"].items():
            lo, hi = v["ci95"]
            t.add_row(
                f"success {task} ({cond})",
                f"{v['success_rate']:.2f} ({v['successes']}/{v['episodes']})",
                f"[{lo:.2f}, {hi:.2f}]",
            )
        if cond != "normal":
            t.add_row(
                f"mean success ({cond})", f"{r['mean_success']:.2f}", f"change {r['change_vs_normal']:+.2f}"
            )
        else:
            t.add_row("mean success", f"{r['mean_success']:.2f}", "")
    return t
