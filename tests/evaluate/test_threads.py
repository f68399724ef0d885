"""Evaluation threads: torch sized to the process's cores, spawned simulator workers single-threaded, and the
OpenMP wait policy chosen per command."""

import multiprocessing as mp
import os
import subprocess
import sys

import pytest
import torch

from vlaprune.errors import VlapruneError
from vlaprune.evaluate.threads import cores, rollout_threads, single_threaded_children, sized_threads


def _child_threads(_=None) -> tuple[int, str | None]:
    import torch

    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def test_cores_follow_the_affinity_mask_and_the_override(monkeypatch):
    monkeypatch.delenv("VLAPRUNE_THREADS", raising=False)
    assert 1 <= cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("VLAPRUNE_THREADS", "3")
    assert cores() == 3
    monkeypatch.setenv("VLAPRUNE_THREADS", "zero")
    with pytest.raises(VlapruneError, match="VLAPRUNE_THREADS"):
        cores()


def test_sized_threads_set_and_restore(monkeypatch):
    monkeypatch.setenv("VLAPRUNE_THREADS", "1")
    before = torch.get_num_threads()
    with sized_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_rollout_threads_leave_the_workers_their_cores(monkeypatch):
    monkeypatch.delenv("VLAPRUNE_THREADS", raising=False)
    n = cores()
    assert rollout_threads(0) == n  # the simulator in this process takes turns with the policy
    assert [rollout_threads(k) for k in (1, n, n + 3)] == [max(1, n - 1), 1, 1]
    monkeypatch.setenv("VLAPRUNE_THREADS", "3")
    assert rollout_threads(2) == 3  # an explicit setting is kept


def test_spawned_workers_start_single_threaded(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ctx = mp.get_context("spawn")  # how the vector env starts its simulator workers
    with single_threaded_children(), ctx.Pool(1) as pool:
        threads, omp = pool.apply(_child_threads)
    assert (threads, omp) == (1, "1")
    assert "OMP_NUM_THREADS" not in os.environ  # the parent's environment is restored


PROBE = """
import os, sys
os.environ.pop("OMP_WAIT_POLICY", None)
if sys.argv[1] == "--mine":
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    sys.argv.pop(1)
from vlaprune import cli
assert "torch" not in sys.modules  # libgomp reads the policy when torch loads it: nothing loaded it yet
import dataclasses
seen = lambda args: print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
stages = cli.commands  # imports the stages (and torch): main calls it after choosing the policy
cli.commands = lambda: {name: dataclasses.replace(c, run=seen) for name, c in stages().items()}
cli.parse = lambda name, cmd, args: args
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "argv,policy",
    [
        (["eval", "--env.type=metaworld", "--env.task=reach-v3"], "PASSIVE"),
        (["demo"], "PASSIVE"),
        (["dtr", "--env.type=metaworld"], "PASSIVE"),
        (["eval", "--offline=true"], "None"),  # no episodes: nothing for sleeping threads to protect
        (["recover", "--steps=1"], "None"),  # training runs at lerobot-train's speed with the default
        (["score"], "None"),
        (["--mine", "demo"], "ACTIVE"),  # a policy you set yourself wins
    ],
)
def test_wait_policy_per_command(argv, policy):
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [policy, "True"]  # set before the command, which then loads torch
