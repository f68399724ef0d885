"""Virtual gates (branch gates, and the paper's whole-update gates): a gate at 1 changes nothing
(bit-identical), at 0 removes the block, hooks always go away."""

import pytest
import torch

from vlaprune.adapters import layout
from vlaprune.adapters.lerobot.batch import example_batch
from vlaprune.errors import VlapruneError
from vlaprune.scoring.gates import update_gates, virtual_gates

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
def test_update_gates_at_one_change_nothing(kind, request, probe_for):
    """Per-example whole-update gates at 1: losses and (batch-2) action chunks bit-identical."""
    policy = request.getfixturevalue(kind)
    probe = probe_for(policy)
    base_loss = [probe.loss(i, b) for i, b in enumerate(probe.batches)]
    base_actions = actions(policy)
    lay = layout(policy)
    with update_gates(lay, None, 4) as gates:
        assert len(gates.values) == sum(len(s) for s in lay.stacks.values())
        assert {tuple(v.shape) for v in gates.values.values()} == {(4,)}
        gated_loss = [probe.loss(i, b) for i, b in enumerate(probe.batches)]
    with update_gates(lay, None, 2):
        gated_actions = actions(policy)
    for a, b in zip(base_loss, gated_loss):
        assert torch.equal(a, b)
    assert torch.equal(base_actions, gated_actions)


@pytest.mark.parametrize("kind", POLICIES)
def test_update_gate_zero_removes_the_block(kind, request, probe_for):
    """a = 0 for every example == the branch gate at 0 (block output = block input), on every component."""
    policy = request.getfixturevalue(kind)
    probe = probe_for(policy, batches=1)
    lay = layout(policy)
    for name in lay.stacks:
        key = (name, 1)
        with virtual_gates(lay) as gates:
            gates.set(key, 0.0)
            removed = probe.mean_loss()
        with update_gates(lay, None, 4) as gates:
            gates.set(key, 0.0)
            assert probe.mean_loss() == removed, name
        assert removed != probe.mean_loss()


def test_update_gates_need_batch_rows(smolvla, probe_for):
    """A branch called with a leading dimension other than the batch size fails loudly, in one line."""
    probe = probe_for(smolvla, batches=1)
    before = hook_count(smolvla)
    with pytest.raises(VlapruneError, match=r"leading dimension of \(4,\), not the batch size 3") as err:
        with update_gates(layout(smolvla), ["vision"], 3):
            probe.mean_loss()
    assert "\n" not in str(err.value)
    assert hook_count(smolvla) == before


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
