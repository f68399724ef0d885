"""Shared fixtures: tiny random-weight instances of every supported class, built offline once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import vlaprune.tiny  # noqa: E402,F401  (registers tiny:NAME with the loader, as the CLI does)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smolvlm_dir(tmp_path_factory):
    from vlaprune.tiny.smolvla import write_tiny_smolvlm

    return write_tiny_smolvlm(tmp_path_factory.mktemp("smolvlm"))


@pytest.fixture(scope="session")
def smolvla(smolvlm_dir):
    from vlaprune.tiny.smolvla import tiny_smolvla

    return tiny_smolvla(smolvlm_dir)


@pytest.fixture(scope="session")
def pi0():
    from vlaprune.tiny.pi import tiny_pi

    return tiny_pi("pi0")


@pytest.fixture(scope="session")
def pi05():
    from vlaprune.tiny.pi import tiny_pi

    return tiny_pi("pi05")


@pytest.fixture(scope="session")
def llama():
    from vlaprune.tiny.hf import tiny_decoder_lm

    return tiny_decoder_lm("llama")


@pytest.fixture(scope="session")
def oft_dir(tmp_path_factory):
    """A tiny OpenVLA-OFT checkpoint folder (remote code, L1 head and proprio projector files beside it)."""
    from vlaprune.tiny.oft import write_tiny_oft

    return write_tiny_oft(tmp_path_factory.mktemp("oft") / "oft")


@pytest.fixture
def oft(oft_dir):
    """A fresh vlaprune handle of `oft_dir` (loaded with trust_remote_code)."""
    from vlaprune.configs import PolicyConfig
    from vlaprune.policy import load_policy

    return load_policy(PolicyConfig(path=str(oft_dir), trust_remote_code=True))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A LeRobotDataset (3 episodes x 20 frames, one 64x64 camera, 4-D state and action) on disk."""
    from vlaprune.tiny.dataset import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("datasets") / "tiny")


@pytest.fixture(scope="session")
def probe_for(tiny_dataset):
    """probe_for(policy, batches=2, seed=0): a Probe over all stacks with calibration from tiny_dataset."""
    from vlaprune.configs import DatasetConfig
    from vlaprune.data import Data, policy_loss
    from vlaprune.policy import wrap
    from vlaprune.scoring import Probe

    def make(policy, batches: int = 2, seed: int = 0, granularity: str = "block"):
        loaded = wrap(policy)
        lay = loaded.layout()
        data = Data(loaded, DatasetConfig(root=str(tiny_dataset))).batches(batches, 4, seed)
        return Probe(lay, list(lay.stacks), data, policy_loss(policy, seed), seed, granularity)

    return make


@pytest.fixture
def cli_error(capsys):
    """cli_error(argv, only=True) -> the error line of a command that must fail cleanly: exit code 2, no
    traceback, stderr ending in one "vlaprune: error: ..." line (with only=False lerobot / tqdm output may
    come before it)."""
    from vlaprune.cli import main

    def run(argv: list[str], only: bool = True) -> str:
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and lines and lines[-1].startswith("vlaprune: error:"), (argv, err[-2000:])
        assert "Traceback" not in err and (len(lines) == 1 or not only), (argv, err[-2000:])
        return lines[-1]

    return run
