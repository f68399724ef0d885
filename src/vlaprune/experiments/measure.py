"""One DTR measurement: cut the sweep's policy -> evaluate -> recover with the budget -> evaluate again, and
the cost of the cut model (`measure_one`, what `dtr.run` calls for every row it has not measured yet).
`cfg` is the sweep's `dtr.DTRConfig` (not imported here: dtr imports this module).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vlaprune.configs import EpisodesConfig, PolicyConfig
from vlaprune.data import Data
from vlaprune.evaluate.cost import cost, inference_call, latency_ratio
from vlaprune.evaluate.offline import offline_eval
from vlaprune.evaluate.run import closed_loop
from vlaprune.policy import Loaded, load_policy
from vlaprune.recover.budget import budget_steps, step_flops
from vlaprune.recover.budget import record as budget_record
from vlaprune.recover.train import RecoverConfig
from vlaprune.recover.train import run as recover
from vlaprune.surgery.plan import plan_to_dict

RECORD_KEYS = ("success_rate", "successes", "episodes", "ci95", "episodes_detail")


def evaluate_policy(
    path: str, cfg: Any, data: Data, held: list[int] | None, probes: bool = False
) -> dict[str, Any]:
    """Offline loss on held-out episodes and closed-loop success per task (with CIs) of a checkpoint (cut
    or recovered from the sweep's policy, so the sweep's processors serve it)."""
    policy = load_policy(
        PolicyConfig(path=path, device=cfg.policy.device, trust_remote_code=cfg.policy.trust_remote_code)
    )
    data.check_held_out(policy.record.trained_on, held or [], "the held-out")
    out: dict[str, Any] = {}
    out["offline"] = offline_eval(
        policy.module, data, held, batch_size=cfg.calibration.batch_size, max_batches=cfg.offline_batches
    )
    if cfg.env.type:
        pre, post = data.processors()
        res = closed_loop(policy.module, pre, post, cfg.env, cfg.eval)["normal"]
        out["success"] = res["mean_success"]
        out["tasks"] = {t: {k: v[k] for k in RECORD_KEYS} for t, v in res["tasks"].items()}
        if probes:
            episodes = EpisodesConfig(
                n_episodes=cfg.probe_episodes, seed=cfg.eval.seed, n_envs=cfg.eval.n_envs
            )
            pres = closed_loop(
                policy.module, pre, post, cfg.env, episodes, language_probe=True, vision_probe=True
            )
            out["probes"] = {
                c: {
                    "mean_success": r["mean_success"],
                    "change_vs_normal": r["change_vs_normal"],
                    "tasks": {t: {k: v[k] for k in RECORD_KEYS} for t, v in r["tasks"].items()},
                }
                for c, r in pres.items()
            }
    return out


def measure_one(
    cfg: Any, mspec: dict, work: Path, *, baseline: bool, data: Data, splits: tuple
) -> dict[str, Any]:
    """Cut -> evaluate -> recover (the budget: same steps, or the baseline's training FLOPs; training
    episodes) -> evaluate; cost of the cut model. `splits`: (training, held-out) episodes."""
    train, held = splits
    b = cfg.recover
    work.mkdir(parents=True, exist_ok=True)
    policy = load_policy(cfg.policy)
    batch = data.batches(1, b.batch_size, mspec["seed"], train)[0]  # the same batch for both counts
    base_flops = _step_flops(policy, batch, b.trainable)
    teacher = _teacher(policy, work.parent / "teacher") if b.mode == "distill" else None
    part = mspec.get("part", "block")
    original = policy.copy() if mspec["drops"] else None  # timed beside the cut (per-action speed-up)
    plan = policy.drop_blocks(mspec["drops"], mspec.get("mode", "pair"), part) if mspec["drops"] else None
    flops = _step_flops(policy, batch, b.trainable) if plan else base_flops
    steps = budget_steps(b.kind, b.steps, base_flops, flops)
    cut = work / "cut"
    if not cut.exists():
        policy.save(cut)
    c = cost(policy.layout(), n_calls=15, warmup=3)
    ratio = _latency_ratio(_same_path(original, plan), policy)
    del original
    before = evaluate_policy(str(cut), cfg, data, held, probes=baseline and cfg.probe_episodes > 0)
    rec_dir = work / "recover"
    episodes = (train, teacher)
    summary = _recover(cfg, cut, rec_dir, steps=steps, seed=mspec["seed"], data=data, episodes=episodes)
    after = evaluate_policy(str(rec_dir / "final"), cfg, data, held)
    removed = {s if part == "block" else f"{s}.{part}": len(v) for s, v in mspec["drops"].items()}
    return {
        "blocks_removed": removed,
        "plan": plan_to_dict(plan) if plan else None,
        "cost": {
            "params": c["params"],
            "flops_chunk": c["flops_chunk"],
            "latency_ms": c["latency"]["median_ms"] if c["latency"] else None,
            # cut / unpruned, timed in interleaved rounds in this measurement (not across rows)
            "latency_ratio_vs_unpruned": ratio,
            "peak_memory_bytes": c.get("peak_memory_bytes"),  # growth of one inference call
            # what one inference holds in all (weights + activations, the DTR paper's 14.4 -> 8.36 GB)
            "inference_memory": c.get("inference_memory"),
        },
        "before": before,
        "after": after,
        "recovery": summary,
        "budget": budget_record(b.kind, steps, b.batch_size, flops),
    }


def _teacher(policy: Loaded, folder: Path) -> Path:
    """The unpruned policy the sweep starts from, saved once as the distillation teacher of every row
    (`--recover.mode=distill`; a fresh OFT head is saved with it, so the teacher is the very model cut)."""
    if not folder.exists():
        tmp = folder.with_name(f"{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save(tmp)
        tmp.rename(folder)
    return folder


def _recover(cfg: Any, cut: Path, rec_dir: Path, *, steps: int, seed: int, data: Data, episodes: tuple):
    """Fine-tune the cut checkpoint with the sweep's budget (`--recover.*`) on the training episodes into
    `rec_dir` (resumed when a killed run left it; redone when it finished unrecorded). episodes: (training
    episodes, the teacher's folder or None); distillation's teacher is the unpruned policy (the baseline is
    distilled from its own copy: fine-tuning anchored to its starting outputs, the same recipe)."""
    episodes, teacher = episodes
    if (rec_dir / "final").exists():
        shutil.rmtree(rec_dir)  # a finished-but-unrecorded recovery: redo it cleanly
    b = cfg.recover
    policy = PolicyConfig(
        path=str(cut), device=cfg.policy.device, trust_remote_code=cfg.policy.trust_remote_code
    )
    rcfg = RecoverConfig(
        policy=policy,
        dataset=cfg.dataset,
        output_dir=str(rec_dir),
        mode=b.mode,
        teacher=str(teacher or ""),
        steps=steps,
        batch_size=b.batch_size,
        lr=b.lr,
        trainable=b.trainable,
        image_shift=b.image_shift,
        seed=seed,
        resume=rec_dir.exists(),
        save_every=max(1, steps // 4),
        log_every=max(1, steps // 10),
    )
    return recover(rcfg, data=data, episodes=episodes)


def _same_path(original: Loaded | None, plan: Any) -> Loaded | None:
    """`original`, on the code path the cut runs: an in-place cut (keep-K/V, action-only) runs the family's
    joint forward (for SmolVLA with faster denoising steps than lerobot's own code), so the unpruned model
    it is timed against runs it too (installing it on an uncut model changes nothing but the code path),
    and the per-action speed-up is the cut's alone."""
    in_place = plan is not None and bool(getattr(plan, "kv_only", None) or getattr(plan, "skipped", None))
    if original is not None and in_place:
        installs = original.layout().skip_in_place
        for spec in installs.values():
            spec.install()
    return original


def _latency_ratio(original: Loaded | None, cut: Loaded) -> float | None:
    """The cut's select_action latency / the unpruned model's, interleaved (None for the baseline)."""
    if original is None or inference_call(original.layout()) is None:
        return None
    return latency_ratio(inference_call(original.layout()), inference_call(cut.layout()))


def _step_flops(policy: Loaded, batch: dict, trainable: str) -> int:
    """Training FLOPs of one step of `policy` with the recovery's trainable flags (`--recover.trainable`)."""
    flags = [(p, p.requires_grad) for p in policy.module.parameters()]
    if trainable == "all":
        policy.module.requires_grad_(True)
    try:
        return step_flops(policy.module, batch)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
