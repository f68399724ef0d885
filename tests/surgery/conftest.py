"""Fresh tiny models per test: surgery mutates them, so the session fixtures are not used here."""

import pytest
import torch

from vlaprune.adapters.lerobot.batch import example_batch, training_pass


@pytest.fixture
def fresh(smolvlm_dir):
    """fresh(kind, **kw): a new tiny model (same seed -> same weights)."""

    def make(kind: str, **kw):
        if kind == "smolvla":
            from vlaprune.tiny.smolvla import tiny_smolvla

            return tiny_smolvla(smolvlm_dir, **kw)
        if kind in ("pi0", "pi05"):
            from vlaprune.tiny.pi import tiny_pi

            return tiny_pi(kind, **kw)
        from vlaprune.tiny.hf import tiny_decoder_lm

        return tiny_decoder_lm(kind, **kw)

    return make


def actions(policy):
    """An action chunk for fixed inputs and fixed noise."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        policy.reset()
        return policy.predict_action_chunk(example_batch(policy, 2))


def loss(policy):
    return training_pass(policy, 2)()[0]


IDS = torch.tensor([[5, 17, 3, 99, 42, 7]])


def logits(lm):
    with torch.no_grad():
        return lm(IDS).logits
