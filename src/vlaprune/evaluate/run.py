r"""`vlaprune eval`: offline metrics on held-out episodes and / or closed-loop success in a simulator,
with the language- and vision-sensitivity probes.

    vlaprune eval --policy.path=out/recover/final --dataset.root=data/mw --offline=true --holdout=.2
    vlaprune eval --policy.path=... --env.type=metaworld --env.task=reach-v3,drawer-close-v3 \
        --eval.n_episodes=30 --language_probe=true --vision_probe=true
    vlaprune eval --policy.path=... --env.type=libero --env.task=libero_spatial --eval.n_episodes=10

Tasks are comma-separated; a LIBERO suite name stands for all its tasks (`libero_spatial/3` is one of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlaprune.adapters import closed_loop_policy
from vlaprune.atomic import write_json_atomic
from vlaprune.configs import HOLDOUT, DatasetConfig, EnvConfig, EpisodesConfig, PolicyConfig
from vlaprune.data import Data
from vlaprune.errors import VlapruneError
from vlaprune.evaluate import envs
from vlaprune.evaluate.closed_loop import (
    CAMERA_PROBES,
    INSTRUCTION_PROBES,
    probe_instruction,
    rollouts,
    summarize,
)
from vlaprune.evaluate.envs.libero import suite_table
from vlaprune.evaluate.offline import offline_eval
from vlaprune.policy import load_policy


@dataclass
class EvalConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    # Closed loop: episodes per task, first episode seed, parallel simulators (--eval.n_episodes, ...).
    eval: EpisodesConfig = field(default_factory=EpisodesConfig)
    # Offline loss / action error on held-out episodes (episodes a vlaprune recovery trained the checkpoint
    # on are refused: plan.json trained_on).
    offline: bool = False
    # Offline: the held-out fraction, the last of each task's episodes (default 0.2, as recover / prune-units
    # / dtr; with --dataset.episodes and no --holdout: exactly the episodes named).
    holdout: float | None = None
    # Offline: frames per batch.
    batch_size: int = 8
    # Offline: at most this many batches (0: every held-out frame).
    max_batches: int = 0
    # Probe: rerun the closed loop with the instruction empty / another task's / shuffled.
    language_probe: bool = False
    # Probe: rerun the closed loop with black frames / one frozen frame of another seed.
    vision_probe: bool = False
    # Save episode videos (the env's first camera) to this folder (empty: none).
    video_dir: str = ""
    # Where the results go (JSON).
    output: str = "eval.json"

    def __post_init__(self) -> None:
        if not self.offline and not self.env.type:
            raise VlapruneError(
                f"nothing to evaluate: pass --offline=true and/or --env.type={'|'.join(envs.ENVS)}"
            )
        if self.env.type:
            task_instructions(self.env)  # unknown task names fail now, before any work


def task_instructions(env: EnvConfig) -> dict[str, str]:
    """Each single task's instruction (suites expanded into their tasks); building the envs also validates
    the task names. Building an env starts no simulator (MetaWorld: a model load; LIBERO: nothing)."""
    out = {}
    for t in (single for name in env.task_names() for single in envs.tasks(env.type, name)):
        e = envs.make(env.type, t)
        out[t] = e.instruction
        e.close()
    return out


def conditions(language_probe: bool = False, vision_probe: bool = False) -> list[tuple[str, dict]]:
    """The closed-loop conditions: "normal", then each probe asked for."""
    out: list[tuple[str, dict]] = [("normal", {})]
    if language_probe:
        out += [(f"instruction:{m}", {"instruction_mode": m}) for m in INSTRUCTION_PROBES]
    if vision_probe:
        out += [(f"camera:{m}", {"camera": m}) for m in CAMERA_PROBES]
    return out


def closed_loop(
    policy,
    pre,
    post,
    env: EnvConfig,
    episodes: EpisodesConfig,
    *,
    language_probe: bool = False,
    vision_probe: bool = False,
    video_dir: str = "",
    progress=None,
) -> dict[str, Any]:
    """Success per task (and per probe), each with its Wilson interval; the mean over tasks. Tasks are the
    outer loop, so each task's simulators serve all its conditions and can then make room for the next.
    progress(n): called per finished episode; default: an episode bar of its own on stderr (DTR, demo)."""
    from tqdm.auto import tqdm

    instructions = task_instructions(env)
    conds = conditions(language_probe, vision_probe)
    bar = None
    if progress is None:
        bar = tqdm(total=len(instructions) * len(conds) * episodes.n_episodes, desc="episodes", leave=False)
        progress = bar.update
    per_task: dict[str, dict[str, Any]] = {name: {} for name, _ in conds}
    others = sorted(set(instructions.values())) + ["pick up the red cube and place it in the bowl"]
    for t in instructions:
        for name, cond in conds:
            text = probe_instruction(instructions[t], cond.get("instruction_mode"), others, seed=len(t))
            res = rollouts(
                policy,
                pre,
                post,
                env.type,
                t,
                episodes.seeds(),
                n_envs=episodes.n_envs,
                instruction=text,
                camera=cond.get("camera"),
                env_kw=env.kwargs(),
                video_dir=video_dir or None if name == "normal" else None,
                progress=progress,
            )
            per_task[name][t] = {**summarize(res), "instruction": text, "episodes_detail": res}
    if bar is not None:
        bar.close()
    out: dict[str, Any] = {}
    for name, rows in per_task.items():
        out[name] = {"mean_success": sum(v["success_rate"] for v in rows.values()) / len(rows), "tasks": rows}
        if env.type == "libero" and (suites := suite_table({t: v["success_rate"] for t, v in rows.items()})):
            out[name]["suites"] = suites  # Spatial / Object / Goal / Long and their average
    base = out["normal"]["mean_success"]
    for name in out:
        out[name]["change_vs_normal"] = out[name]["mean_success"] - base
    return out


def run(cfg: EvalConfig) -> dict[str, Any]:
    from rich.console import Console
    from tqdm.auto import tqdm

    policy = load_policy(cfg.policy)
    if not policy.takes_datasets:
        raise VlapruneError("evaluation runs lerobot policies and OpenVLA-OFT folders with their action head")
    if cfg.env.type:
        for t in task_instructions(cfg.env):  # a family's own pipeline checks its inputs before any episode
            closed_loop_policy(policy.module, cfg.env.type, t)
    result: dict[str, Any] = {"policy": cfg.policy.path, "random_weights": policy.random_weights}
    data = Data(policy, cfg.dataset) if cfg.dataset.given else None  # opened once, used by every part
    if cfg.offline:
        if data is None:
            raise VlapruneError("--offline needs a dataset: --dataset.repo_id / --dataset.root")
        holdout = cfg.holdout if cfg.holdout is not None else 0.0 if cfg.dataset.episodes else HOLDOUT
        _, held = data.split(holdout, "--holdout")
        if held is not None or cfg.dataset.episodes is not None:  # episodes named as held out
            data.check_held_out(policy.record.trained_on, held or data.episodes, "the held-out")
        result["offline"] = offline_eval(
            policy.module, data, held, batch_size=cfg.batch_size, max_batches=cfg.max_batches
        )
    if cfg.env.type:
        pre, post = data.processors() if data else policy.data_format.processors(policy, None)
        n_tasks = len(task_instructions(cfg.env))
        n_cond = len(conditions(cfg.language_probe, cfg.vision_probe))
        with tqdm(total=n_tasks * n_cond * cfg.eval.n_episodes, desc="episodes") as bar:
            result["closed_loop"] = closed_loop(
                policy.module,
                pre,
                post,
                cfg.env,
                cfg.eval,
                language_probe=cfg.language_probe,
                vision_probe=cfg.vision_probe,
                video_dir=cfg.video_dir,
                progress=bar.update,
            )
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
        for suite, rate in r.get("suites", {}).items():
            t.add_row(
                f"success {suite} ({cond})", f"{rate:.2f}", "LIBERO suite mean" if suite != "average" else ""
            )
        if cond != "normal":
            t.add_row(
                f"mean success ({cond})", f"{r['mean_success']:.2f}", f"change {r['change_vs_normal']:+.2f}"
            )
        else:
            t.add_row("mean success", f"{r['mean_success']:.2f}", "")
    return t
