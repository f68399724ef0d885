"""Evaluation threads: torch sized to the process's cores, spawned simulator workers single-threaded."""

import multiprocessing as mp
import os

import pytest
import torch

from vlaprune.errors import VlapruneError
from vlaprune.evaluate.threads import cores, single_threaded_children, sized_threads


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


def test_spawned_workers_start_single_threaded(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ctx = mp.get_context("spawn")  # how the vector env starts its simulator workers
    with single_threaded_children(), ctx.Pool(1) as pool:
        threads, omp = pool.apply(_child_threads)
    assert (threads, omp) == (1, "1")
    assert "OMP_NUM_THREADS" not in os.environ  # the parent's environment is restored
