"""Closed-loop episodes scheduled per env, so that the policy and the simulators overlap.

    results = scheduled(job, sims, seeds)

Each env runs its own episode: the policy computes a chunk (the first `n_action_steps` actions, as lerobot's
select_action queues them) for the envs that have answered, batched over those that answered together, and
each env runs its chunk open loop in its worker (one message per chunk) while the policy computes chunks for
the others; an env whose episode ends resets to the next seed at once. An episode is still a function of
(policy, env, task, seed): the same chunks at the same steps, its noise drawn from its own generator
(`Episode.gen`, seeded with its seed), whatever the other envs do; only the batch a row is computed in
changes, which moves the actions by float rounding (as `--eval.n_envs` always did).
When another env is expected to answer within the time of one policy call (its last command's duration),
the policy waits for it, at most that long, and computes both chunks in one batched call (a batch of 2 costs
little more than a batch of 1): on 2 cores with the demo policy its chunks took ~35 ms and a chunk of steps
~8 ms, so without the wait the two envs took turns and every call had one row.

Policies whose select_action is not a queue over chunks (`chunk_actions` returns None) run episodes in
groups of n_envs with one batched select_action per step (`grouped`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlaprune.adapters import family_of


@dataclass
class Job:
    """What every episode of one `rollouts` call shares."""

    policy: nn.Module
    act: Callable[[dict[str, Any]], np.ndarray]  # raw env batch -> (B, k, D) float32 actions (scheduled)
    text: str
    max_steps: int
    noise: list = field(default_factory=list)  # the next call's row generators (closed_loop.noise_rows)
    probe: Callable[[dict], dict] = lambda obs: obs  # camera probe on one observation
    video_dir: str | None = None
    video_every: int = 1  # videos of episodes 0, k, 2k, ... (the first of each group of n_envs)
    task: str = ""
    progress: Callable[[int], None] | None = None
    # observations of several envs + instructions -> the raw policy batch (closed_loop.to_batch)
    to_batch: Callable[[nn.Module, dict, list], dict] | None = None


def first_camera(pixels) -> np.ndarray:
    return next(iter(pixels.values())) if isinstance(pixels, dict) else pixels


@dataclass
class Episode:
    index: int  # position in the seed list
    seed: int
    gen: torch.Generator  # its policy noise
    t: int = 0
    ret: float = 0.0
    started: bool = False  # its reset has answered
    done: bool = False
    success: bool = False
    queue: list = field(default_factory=list)  # the actions (D,) of its next chunk
    obs: dict | None = None  # the observation waiting for an action
    frames: list | None = None


def chunk_actions(policy: nn.Module, pre, post) -> Callable[[dict[str, Any]], np.ndarray] | None:
    """raw env batch -> the (B, k, D) env actions its select_action would return over the next k calls
    from an empty queue; None when the policy's select_action is something else."""
    own = getattr(policy, "predict_chunk", None)  # a family's own closed-loop pipeline (OFT on LIBERO)
    if callable(own):
        return lambda batch: np.asarray(own(batch), np.float32)
    fam = family_of(policy)  # the family table says whose select_action is a chunk queue
    queues = fam is not None and fam.chunked and hasattr(policy, "predict_action_chunk")
    if not queues or getattr(getattr(policy.config, "rtc_config", None), "enabled", False):
        return None
    n = policy.config.n_action_steps

    def act(batch: dict[str, Any]) -> np.ndarray:
        with torch.no_grad():
            chunk = policy.predict_action_chunk(pre(batch))[:, :n]  # (B, n, D), normalized
        return post(chunk).cpu().numpy().astype(np.float32, copy=False)

    return act


def stack(observations: list[dict]) -> dict[str, Any]:
    """Single-env observations -> one batched observation (pixels per camera, agent_pos)."""

    def cat(values: list):
        if isinstance(values[0], dict):  # one array per camera
            return {k: cat([v[k] for v in values]) for k in values[0]}
        return np.stack(values)

    return {k: cat([o[k] for o in observations]) for k in ("pixels", "agent_pos")}


def _start(job: Job, sims, slots: list, i: int, todo: deque) -> None:
    """Env i starts the next episode (or idles when none is left)."""
    if not todo:
        slots[i] = None
        return
    index, seed = todo.popleft()
    video = job.video_dir is not None and index % job.video_every == 0
    slots[i] = Episode(index, seed, torch.Generator().manual_seed(int(seed)), frames=[] if video else None)
    sims.send(i, "reset", seed)


def _arrive(job: Job, sims, slots: list, i: int, todo: deque, results: list) -> None:
    """Env i answered: a reset gives the first observation; a step adds its reward or ends the episode."""
    ep = slots[i]
    obs, rewards, term, trunc, success, frames = sims.recv(i)
    for r in rewards:  # in order: the same float sums as step by step
        ep.t += 1
        ep.ret += r
    if ep.frames is not None:
        ep.frames += [_frame(job, px) for px in frames]
    if ep.started:
        if term or trunc or ep.t >= job.max_steps:
            ok = success and (term or trunc)
            results[ep.index] = {"seed": ep.seed, "success": ok, "steps": ep.t, "return": round(ep.ret, 6)}
            _write_video(job, ep)
            if job.progress:
                job.progress(1)
            _start(job, sims, slots, i, todo)
            return
    ep.started = True
    ep.obs = job.probe(obs)


def _frame(job: Job, pixels) -> np.ndarray:
    return first_camera(job.probe({"pixels": pixels})["pixels"])


def _dispatch(job: Job, sims, slots: list) -> None:
    """Every env with an observation and a chunk runs the chunk (at most up to the episode cap)."""
    for i, ep in enumerate(slots):
        if ep is not None and ep.obs is not None and ep.queue:
            if ep.frames is not None:
                ep.frames.append(_frame(job, ep.obs["pixels"]))
            actions, ep.queue, ep.obs = ep.queue[: job.max_steps - ep.t], [], None
            sims.send(i, "steps", (actions, ep.frames is not None))


def _plan(job: Job, slots: list, rows: list[int]) -> None:
    """One batched policy call for the envs `rows`: a chunk into each one's queue."""
    eps = [slots[i] for i in rows]
    job.noise[:] = [ep.gen for ep in eps]  # each row's noise from its own episode's generator
    actions = job.act(to_batch_of(job, eps))  # (B, k, D)
    for ep, chunk in zip(eps, actions):
        ep.queue = list(chunk)


def scheduled(job: Job, sims, seeds: list[int]) -> list[dict[str, Any]]:
    """One result {seed, success, steps, return} per seed, episodes scheduled per env (module docstring)."""
    results: list = [None] * len(seeds)
    todo = deque(enumerate(seeds))
    slots: list[Episode | None] = [None] * sims.n
    for i in range(sims.n):
        _start(job, sims, slots, i, todo)
    call = 0.0  # seconds the last policy call took
    while any(ep is not None for ep in slots):
        for i in sims.ready():
            _arrive(job, sims, slots, i, todo, results)
        if sims.eta() < call:  # an env is about to need a chunk too: one batched call for both (module doc)
            for i in sims.ready(timeout=call):
                _arrive(job, sims, slots, i, todo, results)
        need = [i for i, ep in enumerate(slots) if ep is not None and ep.obs is not None]
        if need:
            t0 = time.perf_counter()
            _plan(job, slots, need)
            call = time.perf_counter() - t0
            _dispatch(job, sims, slots)
    return results


def _write_video(job: Job, ep: Episode) -> None:
    if ep.frames is None:
        return
    from lerobot.utils.io_utils import write_video

    Path(job.video_dir).mkdir(parents=True, exist_ok=True)
    name = job.task.replace("/", "-")  # LIBERO tasks are SUITE/ID
    write_video(Path(job.video_dir) / f"{name}_seed{ep.seed}.mp4", ep.frames, fps=20)


def _step_group(job: Job, sims, eps: list[Episode], action: np.ndarray) -> None:
    """Every unfinished episode of the group takes its row of `action`; finished ones keep their last obs."""
    live = [i for i, ep in enumerate(eps) if not ep.done]
    for i in live:
        if eps[i].frames is not None:
            eps[i].frames.append(first_camera(eps[i].obs["pixels"]))
        sims.send(i, "steps", ([action[i]], False))
    for i in live:
        ep = eps[i]
        obs, rewards, term, trunc, success, _ = sims.recv(i)
        ep.t, ep.ret, ep.obs = ep.t + 1, ep.ret + rewards[0], job.probe(obs)
        if term or trunc or ep.t >= job.max_steps:
            ep.done, ep.success = True, success and (term or trunc)


def grouped(job: Job, sims, seeds: list[int], select: Callable[[dict], np.ndarray]) -> list[dict[str, Any]]:
    """Episodes in groups of n_envs, one batched `select(raw batch) -> (B, D)` per step until every episode
    of the group ends (for policies whose select_action is not a queue over chunks)."""
    results: list[dict[str, Any]] = []
    width = sims.n
    for start in range(0, len(seeds), width):
        group = seeds[start : start + width]
        padded = group + [group[-1]] * (width - len(group))  # a short last group: extra envs are ignored
        eps = [Episode(start + k, s, torch.Generator().manual_seed(int(s))) for k, s in enumerate(padded)]
        for ep in eps[len(group) :]:
            ep.done = True  # padding: never stepped after its reset
        if job.video_dir is not None:
            eps[0].frames = []
        for i, s in enumerate(padded):
            sims.send(i, "reset", s)
        for i, ep in enumerate(eps):
            ep.obs = job.probe(sims.recv(i)[0])
        job.policy.reset()
        job.noise[:] = [ep.gen for ep in eps]
        while not all(ep.done for ep in eps):
            batch = to_batch_of(job, eps)
            _step_group(job, sims, eps, select(batch))
        results += [
            {"seed": ep.seed, "success": ep.success, "steps": ep.t, "return": round(ep.ret, 6)}
            for ep in eps[: len(group)]
        ]
        _write_video(job, eps[0])
        if job.progress:
            job.progress(len(group))
    return results


def to_batch_of(job: Job, eps: list[Episode]) -> dict[str, Any]:
    """The raw policy batch of the episodes' current observations."""
    return job.to_batch(job.policy, stack([ep.obs for ep in eps]), [job.text] * len(eps))
