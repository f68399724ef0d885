"""A reused simulator gives a fresh simulator's episode: the same policy, task and seed give the same episode
whether the simulator is new or first ran other episodes (other seeds, another policy, another task's env in
the same process). The simulator cache (evaluate/workers.py) keeps one env per task alive between calls, and
with one env that env lives in the evaluating process beside the other tasks' envs; each MetaWorld env has its
own OpenGL context, which gymnasium makes current only once, so before the fix an env drew its frames in
another env's context (other pixels: tiny pi0 on reach-v3, seed 100000, returned 17.93 instead of 22.21)."""

import hashlib

import numpy as np
import pytest

import vlaprune.tiny  # noqa: F401
from tests.evaluate.test_schedule import same_episodes
from vlaprune.configs import DatasetConfig
from vlaprune.data import Data
from vlaprune.evaluate import closed_loop as cl
from vlaprune.evaluate import envs
from vlaprune.policy import load_policy

SEEDS = [100000, 100001]
KW = {"max_steps": 12}


def digest(x: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


def test_metaworld_frames_do_not_depend_on_other_envs_in_the_process():
    a = envs.make("metaworld", "reach-v3", image_size=32)
    fresh = [digest(a.reset(seed=100000)[0]["pixels"]), digest(a.step(np.full(4, 0.5))[0]["pixels"])]
    b = envs.make("metaworld", "drawer-close-v3", image_size=32)
    other = digest(b.reset(seed=100000)[0]["pixels"])  # b's context is current now
    b.step(np.zeros(4))
    again = [digest(a.reset(seed=100000)[0]["pixels"]), digest(a.step(np.full(4, 0.5))[0]["pixels"])]
    a.close(), b.close()
    assert other not in fresh  # another scene: the comparison could fail
    assert again == fresh


def episodes(policy, task: str, seeds: list[int], n_envs: int) -> list[dict]:
    return cl.rollouts(*policy, "metaworld", task, seeds, n_envs=n_envs, env_kw=KW)


@pytest.mark.parametrize("n_envs", [1, 2])
def test_reused_simulators_give_fresh_simulators_episodes(n_envs, tiny_dataset):
    """One env (in this process): bit-identical, the same batches of one row. Two envs (worker processes):
    the same (seed, success, steps), returns within 1e-4, since which envs share a policy batch depends on
    which answers first, and a batch of 2 rounds matmuls differently from a batch of 1 (test_schedule)."""

    def load(name):
        policy = load_policy(name)
        pre, post = Data(policy, DatasetConfig(root=str(tiny_dataset))).processors()
        return policy.module, pre, post

    pi0, smolvla = load("tiny:pi0"), load("tiny:smolvla")
    try:
        cl.close_envs()
        fresh = episodes(pi0, "reach-v3", SEEDS, n_envs)
        cl.close_envs()
        episodes(smolvla, "reach-v3", [7, 8], n_envs)  # other seeds, another policy, on the same simulators
        episodes(smolvla, "drawer-close-v3", [9], n_envs)  # another task's env beside them
        reused = episodes(pi0, "reach-v3", SEEDS, n_envs)
    finally:
        cl.close_envs()
    if n_envs == 1:
        assert reused == fresh
    same_episodes(reused, fresh, rel=0 if n_envs == 1 else 1e-4)
    assert len({e["return"] for e in fresh}) == len(SEEDS)  # seeds differ, so episodes differ
