"""Virtual gates: g=1 changes nothing (bit-identical), g=0 removes the block, hooks always go away."""

import pytest
import torch

from vlaprune.adapters import layout
from vlaprune.adapters.lerobot_batch import example_batch
from vlaprune.scoring.gates import virtual_gates

POLICIES = ["smolvla", "pi0", "pi05"]


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def actions(policy):
    torch.manual_seed(0)
    policy.reset()
    return policy.predict_action_chunk(example_batch(policy, 2))


@pytest.mark.parametrize("kind", POLICIES)
@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_gates_at_one_change_nothing(kind, granularity, request, probe_for):
    policy = request.getfixturevalue(kind)
    probe = probe_for(policy)
    base_loss = [probe.loss(i, b) for i, b in enumerate(probe.batches)]
    base_actions = actions(policy)
    lay = layout(policy)
    with virtual_gates(lay, granularity=granularity) as gates:
        n_blocks = sum(len(s) for s in lay.stacks.values())
        assert len(gates.values) == n_blocks * (1 if granularity == "block" else 2)
        gated_loss = [probe.loss(i, b) for i, b in enumerate(probe.batches)]
        gated_actions = actions(policy)
    for a, b in zip(base_loss, gated_loss):
        assert torch.equal(a, b)
    assert torch.equal(base_actions, gated_actions)


@pytest.mark.parametrize("kind", POLICIES)
def test_gates_reach_every_component(kind, request, probe_for):
    """Each gate changes the loss when closed on some block of every component: the hooks are live."""
    policy = request.getfixturevalue(kind)
    probe = probe_for(policy, batches=1)
    base = probe.mean_loss()
    lay = layout(policy)
    with virtual_gates(lay) as gates:
        for name, stack in lay.stacks.items():
            changed = False
            for i in range(len(stack)):
                gates.set((name, i), 0.0)
                changed |= probe.mean_loss() != base
                gates.set((name, i), 1.0)
            assert changed, name


def test_hooks_removed_even_on_error(smolvla):
    before = hook_count(smolvla)
    with pytest.raises(RuntimeError, match="boom"), virtual_gates(layout(smolvla)):
        assert hook_count(smolvla) > before
        raise RuntimeError("boom")
    assert hook_count(smolvla) == before


def test_gate_zero_equals_physically_removed_vision_block(smolvla, smolvlm_dir, probe_for):
    """Closing a vision block's gate == deleting that block from the encoder's ModuleList."""
    from vlaprune.tiny.smolvla import tiny_smolvla

    probe = probe_for(smolvla)
    with virtual_gates(layout(smolvla)) as gates:
        gates.set(("vision", 0), 0.0)
        gated = probe.mean_loss()
    cut = tiny_smolvla(smolvlm_dir)  # same seed -> same weights
    enc = cut.model.vlm_with_expert.vlm.model.vision_model.encoder
    enc.layers = torch.nn.ModuleList(list(enc.layers)[1:])
    cut_probe = probe_for(cut)
    assert gated == pytest.approx(cut_probe.mean_loss(), abs=1e-6)
    assert gated != probe.mean_loss()
