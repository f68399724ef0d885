"""Shared fixtures: tiny random-weight instances of every supported class, built offline once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

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
