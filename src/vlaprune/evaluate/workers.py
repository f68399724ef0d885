"""Simulator processes that closed-loop evaluation drives one env at a time.

    sims = simulators(factory, n)        # cached: starting them costs seconds (LIBERO ~10 s)
    sims.send(i, "reset", seed); sims.send(j, "steps", (actions, frames))
    for i in sims.ready(): obs, rewards, terminated, truncated, success, frames = sims.recv(i)

Each env has its own pipe, so one env can step while another waits for the policy, and an env whose
episode ends starts the next one at once (gymnasium's vector envs step and reset all envs together).
`steps` runs a list of actions open loop (a policy's chunk: its actions do not depend on the observations
in between) and stops early when the episode ends: one message per chunk, and the env keeps stepping while
this process computes another env's chunk. An env with `step_unobserved(action) -> (reward, terminated,
truncated, info)` and `observe() -> obs` (MetaWorld) skips rendering the observations in between that no one
looks at (no video): rendering is ~90% of a MetaWorld step at 64 px; the physics, rewards and success are
the same.
A single env runs in this process (nothing to overlap with; no pipe to pay for).
"""

from __future__ import annotations

import atexit
import functools
import math
import time
import traceback
from multiprocessing import connection, get_context
from typing import Any

from vlaprune.errors import VlapruneError
from vlaprune.evaluate.threads import single_threaded_children

MAX_CACHED_SIMS = 8  # simulators kept alive between calls (a LIBERO one holds ~0.9 GB)


def _run(env, cmd: str, arg) -> tuple:
    """reset (arg: seed) -> (obs, [], False, False, False, []);
    steps (arg: (actions, frames)) -> (last obs, rewards, terminated, truncated, success, pixels of the
    observations in between when `frames`): the actions in order until one ends the episode."""
    if cmd == "reset":
        obs, _ = env.reset(seed=arg)
        return obs, [], False, False, False, []
    actions, want = arg
    rewards, frames = [], []
    blind = None if want else getattr(env, "step_unobserved", None)
    for k, action in enumerate(actions):
        if blind is not None and k < len(actions) - 1:  # nobody looks at this observation: do not render it
            obs, (reward, term, trunc, info) = None, blind(action)
        else:
            obs, reward, term, trunc, info = env.step(action)
        rewards.append(float(reward))
        if term or trunc or k == len(actions) - 1:
            if obs is None:  # the episode ended on an unobserved step: its last observation is still sent
                obs = env.observe()
            return obs, rewards, bool(term), bool(trunc), bool(info["success"]), frames
        if want:
            frames.append(obs["pixels"])
    raise VlapruneError("steps needs at least one action")


def _serve(conn, factory) -> None:
    """A worker process: build the env, then answer commands until "close"."""
    try:
        env = factory()
    except Exception:  # noqa: BLE001  (reported to the parent, which raises)
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    while True:
        cmd, arg = conn.recv()
        if cmd == "close":
            env.close()
            return
        try:
            conn.send(("ok", _run(env, cmd, arg)))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


def _answer(msg: tuple) -> Any:
    status, value = msg
    if status == "error":
        raise VlapruneError(f"a simulator worker failed:\n{value}")
    return value


class Simulators:
    """n envs of one task, each in its own process (n > 1) or here (n == 1)."""

    def __init__(self, factory: functools.partial, n: int):
        self.n, self.busy = n, [False] * n
        self.sent, self.took = [0.0] * n, [0.0] * n  # when env i's command went out; how long its last took
        self.local = factory() if n == 1 else None
        self.results: dict[int, tuple] = {}
        self.procs, self.conns = [], []
        if self.local is not None:
            return
        ctx = get_context("spawn")
        with single_threaded_children():  # one OpenMP / BLAS thread per worker (evaluate/threads.py)
            for _ in range(n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, factory), daemon=True)
                proc.start()
                child.close()
                self.procs.append(proc)
                self.conns.append(parent)
        for c in self.conns:
            _answer(c.recv())

    def send(self, i: int, cmd: str, arg=None) -> None:
        """Start `reset` (arg: seed) or `steps` (arg: (actions, frames)) on env i; recv(i) answers."""
        if self.busy[i]:
            raise VlapruneError(f"simulator {i} is still busy")
        self.busy[i], self.sent[i] = True, time.perf_counter()
        if self.local is not None:
            try:
                self.results[i] = ("ok", _run(self.local, cmd, arg))
            except Exception:  # noqa: BLE001
                self.results[i] = ("error", traceback.format_exc())
        else:
            self.conns[i].send((cmd, arg))

    def ready(self, block: bool = True, timeout: float | None = None) -> list[int]:
        """Busy envs whose answer has arrived (waits for at least one when `block` and any is busy, at most
        `timeout` seconds when given)."""
        busy = [i for i in range(self.n) if self.busy[i]]
        if self.local is not None or not busy:
            return busy
        got = connection.wait([self.conns[i] for i in busy], timeout=timeout if block else 0)
        return [i for i in busy if self.conns[i] in got]

    def eta(self) -> float:
        """Seconds until the first busy env is expected to answer, if its command takes as long as its last
        one did (inf when none is busy)."""
        now = time.perf_counter()
        due = [self.sent[i] + self.took[i] - now for i in range(self.n) if self.busy[i]]
        return min(due, default=math.inf)

    def recv(self, i: int) -> tuple:
        """(obs, rewards, terminated, truncated, success, frames) of env i's last command."""
        msg = self.results.pop(i) if self.local is not None else self.conns[i].recv()
        self.busy[i], self.took[i] = False, time.perf_counter() - self.sent[i]
        return _answer(msg)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        for i, c in enumerate(self.conns):
            try:
                if self.busy[i]:
                    c.recv()
                c.send(("close", None))
            except (OSError, EOFError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


_CACHE: dict[tuple, Simulators] = {}


def simulators(factory: functools.partial, n: int) -> Simulators:
    """n simulators of one task, kept for later calls. At most MAX_CACHED_SIMS simulators stay alive: the
    least recently used go first."""
    key = (factory.args, tuple(sorted(factory.keywords.items())), n)
    if key in _CACHE:
        _CACHE[key] = _CACHE.pop(key)  # most recently used last
        return _CACHE[key]
    while _CACHE and sum(k[-1] for k in _CACHE) + n > MAX_CACHED_SIMS:
        _CACHE.pop(next(iter(_CACHE))).close()
    if not _CACHE:
        atexit.register(close_all)
    _CACHE[key] = Simulators(factory, n)
    return _CACHE[key]


def close_all() -> None:
    """Close every cached simulator."""
    while _CACHE:
        _CACHE.popitem()[1].close()
