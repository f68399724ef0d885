"""Recovery under `accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo; accelerate's `--cpu`
launches several processes only through mpirun), as lerobot-train runs: it trains every
parameter of tiny pi0 and SmolVLA (SmolVLA's last VLM layer output and pi0's unused parameters get no
gradient: DDP needs find_unused_parameters), and a run killed mid-way resumes to the weights of an
uninterrupted one."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
STEPS, SAVE_EVERY = 40, 4


def launch(policy: str, data: Path, out: Path, resume: bool = False) -> subprocess.Popen:
    args = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",  # torch.distributed.run; with --policy.device=cpu the processes use gloo on the CPU
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        str(BIN / "vlaprune"),
        "recover",
        f"--policy.path={policy}",
        "--policy.device=cpu",
        f"--dataset.root={data}",
        f"--output_dir={out}",
        f"--steps={STEPS}",
        "--batch_size=2",
        f"--save_every={SAVE_EVERY}",
        "--log_every=1",
        "--trainable=all",
        f"--resume={str(resume).lower()}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.parametrize("policy", ["tiny:pi0", "tiny:smolvla"])
def test_two_processes_train_and_a_killed_run_resumes_to_the_same_weights(policy, tiny_dataset, tmp_path):
    finish(launch(policy, tiny_dataset, tmp_path / "a"))
    summary = json.loads((tmp_path / "a" / "final" / "recover.json").read_text())
    assert summary["processes"] == 2 and summary["steps_this_run"] == STEPS
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "train.log").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # one process writes the log

    proc = launch(policy, tiny_dataset, tmp_path / "b")
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpts / "last").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in tree:  # the launcher and both ranks (torch.distributed.run gives them their own sessions)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (tmp_path / "b" / "final").exists(), "the run finished before it could be killed"
    done = int((ckpts / "last").read_text())
    assert 0 < done < STEPS
    out = finish(launch(policy, tiny_dataset, tmp_path / "b", resume=True))
    resumed = json.loads((tmp_path / "b" / "final" / "recover.json").read_text())
    assert resumed["steps_this_run"] == STEPS - done, out[-2000:]
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(ckpts / f"{SAVE_EVERY:06d}" / "trainee.safetensors")
    assert any(not torch.equal(first[k], a[k]) for k in a if k in first)  # it kept training after that
