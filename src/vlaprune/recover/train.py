r"""`vlaprune recover`: fine-tune a policy on a LeRobotDataset under a fixed budget, resumably.

    vlaprune recover --policy.path=out/smolvla-12 --dataset.repo_id=lerobot/libero_spatial --steps=20000 \
        --batch_size=32 --output_dir=out/recover-12 [--mode=lora|distill --teacher=lerobot/smolvla_base]

The budget (steps, batch size, optimizer and LR schedule) is the policy's own lerobot preset unless set, so
the unpruned baseline and every pruned variant get the same one. Training steps are lerobot's own
`update_policy` under Accelerate (multi-GPU / multi-node with `accelerate launch`, mixed precision with
--mixed_precision=bf16|fp16); data order is lerobot's EpisodeAwareSampler, a pure function of (seed,
epoch), so a resumed run continues sample-exactly; RNG, optimizer and scheduler states are restored too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlaprune.adapters import family_of
from vlaprune.configs import HOLDOUT, DatasetConfig, PolicyConfig
from vlaprune.data import Data
from vlaprune.errors import VlapruneError
from vlaprune.policy import Loaded, load_policy
from vlaprune.recover import checkpoints
from vlaprune.recover.modes import MODES, Distill, merge_lora, wrap_lora
from vlaprune.surgery.checkpoint import save_pruned


@dataclass
class RecoverConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Required: the folder the recovered checkpoint goes to (with checkpoints/ to resume from).
    output_dir: str = ""
    # What is trained. full: the policy itself; lora: LoRA adapters (peft: OpenVLA-OFT's own recipe, with
    # its head and projectors trained fully; lerobot's wrap_with_peft for lerobot policies), merged into the
    # weights at the end; distill: the policy, distilled from the unpruned --teacher.
    mode: str = "full"
    # Unpruned teacher for --mode=distill (a policy path).
    teacher: str = ""
    # The budget: optimizer steps.
    steps: int = 1000
    # Frames per optimizer step (per process).
    batch_size: int = 8
    # Optimizer / schedule: the policy's lerobot preset; lr overrides its peak learning rate, for the
    # optimizer and the scheduler alike (the decay floor keeps its ratio to the peak: lr * decay_lr / peak).
    lr: float | None = None
    # preset: the policy's own trainable flags (e.g. SmolVLA trains the expert only); all: everything.
    trainable: str = "preset"
    # Seed of the data order, augmentation and the policy's noise / time samples.
    seed: int = 0
    # Save a resumable checkpoint (weights, optimizer, scheduler, RNG states) every this many steps.
    save_every: int = 500
    # Log loss and learning rate every this many steps.
    log_every: int = 50
    # Continue from the latest checkpoint in output_dir (refused when it was written for another model or
    # mode).
    resume: bool = False
    # auto: as lerobot-train, from the policy's config (`dtype` bfloat16 -> bf16, float16 -> fp16, float32 ->
    # no; policies without `dtype`, `use_amp` -> the device's autocast dtype); no: full precision;
    # bf16: bfloat16 autocast; fp16: float16 autocast with loss scaling.
    mixed_precision: str = "auto"
    # DataLoader worker processes (0: load in the training process).
    num_workers: int = 0
    # Log to Weights & Biases (needs wandb installed and logged in).
    wandb: bool = False
    # Data augmentation: random image shifts of up to this many pixels (0 = none).
    image_shift: int = 0
    # LoRA rank (--mode=lora); default: the family's recipe (OpenVLA-OFT's finetune.py: 32), lerobot: 16.
    lora_r: int | None = None
    # --mode=distill: weight of the task loss on the dataset's actions (1 - alpha: matching the teacher's
    # action output on the same noise and time samples).
    distill_alpha: float = 0.5
    # --mode=distill: weight of a term matching the action stack's last hidden states to the teacher's
    # (0: none).
    distill_hidden: float = 0.0
    # Episodes kept out of training, per task (the split `eval --holdout` and the sweeps use): the last
    # `holdout` fraction is test, the `validation` fraction before it validation. The checkpoint records
    # which episodes it trained on (plan.json `trained_on`) and `eval` refuses to call those held out.
    # 0.2, as eval, prune-units and dtr, so recover -> prune-units -> eval works with defaults; 0: all.
    holdout: float = HOLDOUT
    # Fraction of each task's episodes before the held-out ones kept for validation (0: none).
    validation: float = 0.0

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise VlapruneError("--output_dir is required (checkpoints, logs and the final policy go there)")
        if self.steps < 1:
            raise VlapruneError(f"--steps={self.steps}: the budget must be at least one optimizer step")
        if self.batch_size < 1:
            raise VlapruneError(f"--batch_size={self.batch_size}: need at least one frame per step")
        if self.mode not in MODES:
            raise VlapruneError(f"unknown --mode={self.mode!r}; choose one of {MODES}")
        if self.mode == "distill" and not self.teacher:
            raise VlapruneError("--mode=distill needs --teacher=PATH (the unpruned policy)")
        if self.trainable not in ("preset", "all"):
            raise VlapruneError(f"--trainable={self.trainable!r}; choose preset or all")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise VlapruneError(f"--mixed_precision={self.mixed_precision!r}; choose auto, no, bf16 or fp16")


class _StepStats:
    """What lerobot's `update_policy` writes into (its MetricsTracker interface, minus the bookkeeping)."""

    def __init__(self) -> None:
        self.loss = self.grad_norm = self.lr = self.update_s = 0.0
        self.extra: dict[str, Any] = {}

    def update_metrics(self, out: dict) -> None:
        self.extra = {k: v for k, v in out.items() if isinstance(v, int | float)}


def build_trainee(cfg: RecoverConfig, device: str = "") -> tuple[Loaded, torch.nn.Module]:
    """(policy, module that is trained): the policy itself, its LoRA wrapper, or a Distill wrapper."""
    pcfg = dataclasses.replace(cfg.policy, device=device or cfg.policy.device)
    policy = load_policy(pcfg)
    if not policy.takes_datasets:
        raise VlapruneError(
            "recovery trains lerobot policies and OpenVLA-OFT checkpoints with their action head; this model "
            "is neither"
        )
    module = policy.module
    if cfg.trainable == "all":
        module.requires_grad_(True)
    if cfg.mode == "lora":
        return policy, wrap_lora(module, cfg.lora_r, cfg.policy.path)
    if cfg.mode == "distill":
        teacher = load_policy(dataclasses.replace(pcfg, path=cfg.teacher, oft_head="")).module
        return policy, Distill(module, teacher, cfg.distill_alpha, cfg.distill_hidden)
    return policy, module


def _optimizer(policy: torch.nn.Module, trainee, cfg: RecoverConfig):
    """The family's own recipe where it has one (OpenVLA-OFT: finetune.py's AdamW at 5e-4 or --lr, x0.1
    after 100k steps, no gradient clipping; `adapters.openvla.recipe`), else the policy's lerobot optimizer
    and scheduler presets: --lr sets the optimizer's lr and the scheduler's peak, and moves the decay floor
    with it (decay_lr * lr / peak_lr), so the schedule keeps its shape."""
    fam = family_of(policy)
    if fam is not None and fam.recipe is not None:
        return fam.recipe.optimizer([p for p in trainee.parameters() if p.requires_grad], cfg.lr)
    if not hasattr(getattr(policy, "config", None), "get_optimizer_preset"):
        raise VlapruneError("this policy has neither a lerobot optimizer preset nor a recipe of its own")
    opt_cfg = policy.config.get_optimizer_preset()
    sched_cfg = policy.config.get_scheduler_preset()
    if cfg.lr is not None:
        opt_cfg.lr = cfg.lr
        peak = getattr(sched_cfg, "peak_lr", None)
        if peak:
            if getattr(sched_cfg, "decay_lr", None) is not None:
                sched_cfg.decay_lr = sched_cfg.decay_lr * cfg.lr / peak
            sched_cfg.peak_lr = cfg.lr
    if cfg.mode == "full" and hasattr(policy, "get_optim_params"):
        params = policy.get_optim_params()
    else:
        params = [p for p in trainee.parameters() if p.requires_grad]
    optimizer = opt_cfg.build(params)
    scheduler = sched_cfg.build(optimizer, cfg.steps) if sched_cfg is not None else None
    return optimizer, scheduler


def _mixed_precision(cfg: RecoverConfig) -> str:
    """--mixed_precision, with "auto" resolved from the policy's config as lerobot-train does."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    pcfg = _policy_config(cfg.policy.path)
    dtype = pcfg.get("dtype")
    if dtype is not None:
        return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")
    if pcfg.get("use_amp"):
        device = cfg.policy.device or pcfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        autocast = torch.get_autocast_dtype(torch.device(device).type)
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, "no")
    return "no"


def _policy_config(path: str) -> dict[str, Any]:
    """The config.json of a policy folder or hub id ({} for built models, or when it cannot be read: the
    loader reports that one properly)."""
    file = Path(path) / "config.json"
    try:
        if not file.is_file() and "/" in path and not path.startswith(("tiny:", ".", "/")):
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(path, "config.json"))
        return json.loads(file.read_text()) if file.is_file() else {}
    except Exception:  # noqa: BLE001  (offline, missing, not JSON)
        return {}


def run(cfg: RecoverConfig, data: Data | None = None, episodes: list[int] | None = None) -> dict[str, Any]:
    """Train, checkpoint every `save_every` steps, resume from the last checkpoint, save the final policy.

    data: the dataset, already opened by the caller (e.g. the DTR sweep; its processors serve this policy
    too); default: opened here from `cfg.dataset`. episodes: train on these only (default: all of it)."""
    from accelerate import Accelerator
    from lerobot.utils.random_utils import set_seed

    out = Path(cfg.output_dir)
    last = checkpoints.latest(out / "checkpoints")
    finished = _finished_steps(out)
    if finished and (not cfg.resume or cfg.steps <= finished):
        raise VlapruneError(
            f"{out} holds a run finished at step {finished}; --resume=true --steps=N with N > {finished} "
            "extends it, or choose a new --output_dir"
        )
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise VlapruneError(
            f"{out} is not empty; pass --resume=true to continue that run or a new --output_dir"
        )
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg),
        step_scheduler_with_optimizer=False,
        cpu=cfg.policy.device == "cpu",
        # as lerobot-train: parameters the loss does not reach in a step (pi0's unused heads, SmolVLA's last
        # VLM layer output with --trainable=all) must not stall DDP's gradient reduction
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as lerobot-train
    set_seed(cfg.seed)
    # Accelerate picks the device (one GPU per process under `accelerate launch`); the policy's config
    # follows it so that the processors move every batch to the same device.
    policy, trainee = build_trainee(cfg, str(accelerator.device))
    data = data or Data(policy, cfg.dataset)
    if episodes is None:
        episodes = data.splits(cfg.holdout, cfg.validation).train
    with data.augmented(_shift(cfg.image_shift)):
        return _train(cfg, accelerator, policy, trainee, data, episodes=episodes, last=last)


def _train(cfg, accelerator, policy: Loaded, trainee, data: Data, *, episodes, last) -> dict:
    """Steps `cfg.steps` from the last checkpoint (or 0), then saves the final policy; the summary."""
    out = Path(cfg.output_dir)
    optimizer, scheduler = _optimizer(policy.module, trainee, cfg)
    step = checkpoints.restore(last, trainee, optimizer, scheduler) if cfg.resume and last is not None else 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "recover_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    loader = _loader(cfg, data.dataset, episodes, step, accelerator)
    trainee, optimizer, loader, scheduler = accelerator.prepare(trainee, optimizer, loader, scheduler)
    t_start, start_step = time.perf_counter(), step
    preset = getattr(getattr(policy.module, "config", None), "get_optimizer_preset", None)
    grad_clip = (getattr(preset(), "grad_clip_norm", 0.0) or 0.0) if preset else 0.0
    opt = (optimizer, scheduler, grad_clip)
    losses = _steps(cfg, accelerator, trainee, opt, data.processors()[0], loader, step=step)
    elapsed = time.perf_counter() - t_start
    policy.record.trained_on = [
        *(policy.record.trained_on or []),
        {"dataset": data.identity(), "episodes": sorted(int(e) for e in episodes)},
    ]
    summary = _summary(cfg, cfg.steps - start_step, elapsed, losses, accelerator.num_processes)
    if accelerator.is_main_process:  # one process writes the log, checkpoints and the final policy
        _finish(cfg, policy, accelerator.unwrap_model(trainee), out, summary, data)
        logging.info("recover finished: %s", summary)
        loss = (
            f"final loss {summary['last_loss']:.4f}" if summary["last_loss"] is not None else "no steps run"
        )
        print(
            f"recover: {cfg.steps} steps ({summary['steps_this_run']} in this run), {loss}; wrote "
            f"{out / 'final'}"
        )
    accelerator.wait_for_everyone()
    return summary


def _loader(cfg: RecoverConfig, dataset, episodes, step: int, accelerator) -> torch.utils.data.DataLoader:
    """lerobot-train's loader: EpisodeAwareSampler over `episodes` (a pure function of seed and epoch),
    advanced past the `step` steps already run; lerobot's collate function for language columns."""
    from lerobot.datasets.sampler import EpisodeAwareSampler, compute_sampler_state
    from lerobot.utils.collate import lerobot_collate_fn

    sampler = EpisodeAwareSampler(
        dataset.meta.episodes["dataset_from_index"],
        dataset.meta.episodes["dataset_to_index"],
        episode_indices_to_use=episodes,
        shuffle=True,
        seed=cfg.seed,
        absolute_to_relative_idx=dataset.absolute_to_relative_idx,
    )
    if step:
        sampler.load_state_dict(
            compute_sampler_state(step, len(sampler), cfg.batch_size, accelerator.num_processes)
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=lerobot_collate_fn if dataset.meta.has_language_columns else None,  # as lerobot-train
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by the loader
        pin_memory=accelerator.device.type == "cuda",
    )


def _steps(cfg: RecoverConfig, accelerator, trainee, opt: tuple, pre, loader, *, step: int) -> list[float]:
    """lerobot's `update_policy` from `step` to cfg.steps (opt: optimizer, scheduler, gradient clip norm);
    logs and checkpoints; the losses of this run."""
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.utils import cycle
    from tqdm.auto import tqdm

    optimizer, scheduler, grad_clip = opt
    main = accelerator.is_main_process
    log = (Path(cfg.output_dir) / "train.log").open("a") if main else None
    wandb = _wandb(cfg) if cfg.wandb and main else None
    stats, batches, losses = _StepStats(), cycle(loader), []
    bar = tqdm(total=cfg.steps, initial=step, desc="recover", disable=not main)
    while step < cfg.steps:
        t0 = time.perf_counter()
        batch = pre(next(batches))
        data_s = time.perf_counter() - t0
        stats, _ = update_policy(stats, trainee, batch, optimizer, grad_clip, accelerator, scheduler)
        step += 1
        losses.append(stats.loss)
        if not math.isfinite(stats.loss):
            raise VlapruneError(f"the training loss became {stats.loss} at step {step}; lower --lr")
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}", refresh=False)
        if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            row = {**stats.extra, "step": step, "loss": stats.loss, "lr": stats.lr}
            row |= {"grad_norm": stats.grad_norm, "update_s": stats.update_s, "data_s": data_s}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if wandb:
                wandb.log(row, step=step)
        if main and (step % cfg.save_every == 0 or step == cfg.steps):
            module = accelerator.unwrap_model(trainee)
            checkpoints.save(
                Path(cfg.output_dir) / "checkpoints",
                step,
                cfg.steps,
                module,
                optimizer,
                scheduler,
                batch_size=cfg.batch_size,
            )
    bar.close()
    if log is not None:
        log.close()
    return losses


def _finished_steps(out: Path) -> int:
    """The steps of the finished run in `out` (its final/recover.json), 0 when there is none."""
    summary = out / "final" / "recover.json"
    return int(json.loads(summary.read_text()).get("steps", 0)) if summary.is_file() else 0


def _summary(cfg, steps_run: int, elapsed: float, losses: list[float], processes: int) -> dict:
    """recover.json: the budget, what this run did, its throughput (per process) and losses."""
    return {
        "steps": cfg.steps,
        "steps_this_run": steps_run,
        "batch_size": cfg.batch_size,
        "processes": processes,
        "mode": cfg.mode,
        **({"teacher": cfg.teacher} if cfg.mode == "distill" else {}),
        "seconds_this_run": round(elapsed, 3),
        "samples_per_s": round(steps_run * cfg.batch_size / elapsed, 3) if elapsed and steps_run else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def _finish(cfg, policy: Loaded, trainee, out: Path, summary: dict, data: Data) -> None:
    """Save the trained policy (LoRA merged, distillation wrapper dropped) with the policy's pruning record
    as a (pruned) checkpoint, with processors (the source's, else built from the dataset). An extended run
    replaces its old final/ (set aside first: a crash in between leaves the checkpoints to resume from)."""
    final_module = merge_lora(trainee) if cfg.mode == "lora" else policy.module
    old = out / ".final.old"
    if (out / "final").exists():
        shutil.rmtree(old, ignore_errors=True)
        (out / "final").rename(old)
    with data.processors_folder() as procs:
        save_pruned(
            final_module,
            policy.record,
            out / "final",
            processors_from=procs,
            extra_json={"recover.json": summary},
        )
    shutil.rmtree(old, ignore_errors=True)


def _shift(pixels: int):
    """Random translation of every camera image by up to `pixels` (torchvision), or None."""
    if pixels <= 0:
        return None
    from torchvision.transforms import v2

    def shift(img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        return v2.RandomAffine(degrees=0, translate=(pixels / w, pixels / h))(img)

    return shift


def _wandb(cfg: RecoverConfig):
    try:
        import wandb
    except ImportError:
        raise VlapruneError("--wandb=true needs the wandb package: pip install wandb") from None
    wandb.init(project="vlaprune", config=asdict(cfg), dir=cfg.output_dir)
    return wandb
