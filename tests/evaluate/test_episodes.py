"""Same seed, same episode: a closed-loop episode is a function of (policy, env, task, seed), whatever the
number of parallel envs and whatever ran before in the process (here: other rollouts, a recovery run and
a scrambled global RNG), in two separate processes (run at the same time)."""

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
import numpy as np
import torch
import vlaprune.tiny  # noqa: F401
from vlaprune.configs import DatasetConfig, PolicyConfig
from vlaprune.data import Data
from vlaprune.evaluate.closed_loop import close_envs, rollouts
from vlaprune.policy import load_policy

n_envs, root, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
policy = load_policy("tiny:smolvla")
pre, post = Data(policy, DatasetConfig(root=root)).processors()
if n_envs > 1:  # disturb everything a sweep would have run before
    from vlaprune.recover.train import RecoverConfig, run

    run(RecoverConfig(policy=PolicyConfig(path="tiny:smolvla"), dataset=DatasetConfig(root=root),
                      output_dir=work, steps=2, batch_size=2))
    rollouts(policy.module, pre, post, "metaworld", "reach-v3", [7, 8, 9], n_envs=n_envs,
             env_kw={"max_steps": 6})
    torch.manual_seed(1234); torch.randn(999); np.random.seed(99); np.random.rand(7)
out = {}
for task in ("reach-v3", "drawer-close-v3"):
    out[task] = rollouts(policy.module, pre, post, "metaworld", task, [100000, 100001, 100002],
                         n_envs=n_envs, env_kw={"max_steps": 12})
close_envs()
print("RESULT " + json.dumps(out))
"""


def start(n_envs: int, root, work) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(n_envs), str(root), str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def episodes(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_episodes_do_not_depend_on_n_envs_or_history(tiny_dataset, tmp_path):
    procs = [start(1, tiny_dataset, tmp_path / "a"), start(2, tiny_dataset, tmp_path / "b")]  # at once
    one, two = map(episodes, procs)
    strip = lambda r: {t: [(e["seed"], e["success"], e["steps"]) for e in eps] for t, eps in r.items()}  # noqa: E731
    assert strip(one) == strip(two)
    # returns match to float noise (a batch of 2 rounds matmuls differently from a batch of 1)
    for task in one:
        for a, b in zip(one[task], two[task]):
            assert abs(a["return"] - b["return"]) <= 1e-4 * max(1.0, abs(a["return"])), (task, a, b)
    for task, eps in one.items():
        assert [e["seed"] for e in eps] == [100000, 100001, 100002]
        assert len({e["return"] for e in eps}) == 3, (task, eps)  # seeds differ, so episodes differ
