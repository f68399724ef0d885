"""Action-only drops (the DTR paper's action cut in joint-attention VLAs): an expert block goes, every
language block stays.

The reference is GateProbe's own gate: the unpruned policy with action block j's whole residual update gated
to 0 (`scoring.gates.update_gates`). The cut policy must give the same actions (same noise) and the same
loss, so the gate that GateProbe scores is exactly the cut that surgery makes.
"""

import json

import pytest
import torch

from tests.surgery.conftest import actions, loss
from vlaprune.adapters import layout
from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.adapters.lerobot.batch import example_batch
from vlaprune.adapters.skipped import is_skipped
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.cost import cost
from vlaprune.policy import load_policy, wrap
from vlaprune.scoring.gates import update_gates
from vlaprune.surgery import drop_blocks

POLICIES = ["smolvla", "pi0", "pi05"]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def gated(policy, blocks, what):
    """`what(policy)` with the whole residual update of action blocks `blocks` gated to 0 (batch 2)."""
    with update_gates(layout(policy), ["action"], 2) as gates:
        for j in blocks:
            gates.set(("action", j), 0.0)
        return what(policy)


@pytest.mark.parametrize("kind", POLICIES)
@pytest.mark.parametrize("blocks", [[1], [0, 2]])  # SmolVLA: 1 is cross-attention, 0 and 2 self-attention
def test_action_only_drop_equals_the_gate_at_zero(kind, blocks, fresh):
    ref = fresh(kind)
    unpruned = actions(ref)
    want_actions = gated(ref, blocks, actions)
    want_loss = gated(ref, blocks, loss)
    assert not torch.allclose(want_actions, unpruned, atol=1e-4)  # the gate matters
    policy = fresh(kind)
    lang_before = [n_params(b) for b in layout(policy).stacks["language"].blocks]
    plan = drop_blocks(policy, {"action": blocks})
    assert plan.mode == "action_only" and plan.skipped == {"action": blocks}
    assert not any(plan.drops.values()) and not plan.coupled and not plan.kv_only
    torch.testing.assert_close(actions(policy), want_actions, rtol=1e-5, atol=1e-6)
    got_loss = loss(policy)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    got_loss.backward()  # still trainable
    lay = layout(policy)
    assert [n_params(b) for b in lay.stacks["language"].blocks] == lang_before  # every language block stays
    assert [is_skipped(b) for b in lay.stacks["action"].blocks] == [j in blocks for j in range(4)]
    policy.reset()
    for _ in range(policy.config.n_action_steps + 1):  # select_action across a queue refill (KV cache)
        assert torch.isfinite(policy.select_action(example_batch(policy, 1))).all()


@pytest.mark.parametrize("kind", POLICIES)
def test_params_and_flops_drop_by_the_expert_blocks_only(kind, fresh):
    policy = fresh(kind)
    lay = layout(policy)
    removed = sum(n_params(lay.stacks["action"].blocks[j]) for j in (1, 3))
    before = cost(lay, n_calls=1, warmup=0)
    plan = drop_blocks(policy, {"action": [1, 3]})
    after = cost(layout(policy), n_calls=1, warmup=0)
    assert plan.params_before - plan.params_after == removed
    assert plan.component_params_before["language"] == plan.component_params_after["language"]
    assert plan.component_params_before["vision"] == plan.component_params_after["vision"]
    assert plan.component_params_after["action"] == plan.component_params_before["action"] - removed
    assert after["flops_chunk"] < before["flops_chunk"] and after["flops_forward"] < before["flops_forward"]
    assert "action-only drop [1, 3]" in plan.summary()


@pytest.mark.parametrize("kind", POLICIES)
def test_protocol_cuts_of_the_expert_are_valid(kind, fresh):
    """SmolVLA's drop_half of the action expert broke the pair rules; alone it is valid (and keep_2)."""
    for blocks in ([1, 3], [1, 2]):  # drop_half, keep_2 of 4 blocks
        policy = fresh(kind)
        plan = drop_blocks(policy, {"action": blocks})
        assert plan.blocks_after["language"] == 4 and plan.skipped == {"action": blocks}
        assert torch.isfinite(actions(policy)).all()


@pytest.mark.parametrize("kind", POLICIES)
def test_save_strict_reload_same_actions(kind, fresh, tmp_path):
    handle = wrap(fresh(kind))
    plan = handle.drop_blocks({"action": [1, 3]})
    out = handle.save(tmp_path / "ckpt")
    saved = json.loads((out / "plan.json").read_text())
    assert saved["plans"][0]["mode"] == "action_only" and saved["plans"][0]["skipped"] == {"action": [1, 3]}
    assert not saved["family_loader_ok"] and saved["lerobot_type"] == f"vlaprune_{kind}"  # via the plugin
    loaded = load_policy(out)
    assert loaded.record.plans[0].skipped == plan.skipped
    assert n_params(loaded.module) == plan.params_after
    assert torch.equal(actions(loaded.module), actions(handle.module))
    assert torch.equal(actions(handle.copy().module), actions(handle.module))


@pytest.mark.parametrize("kind", ["smolvla", "pi0"])
def test_both_components_at_one_index(kind, fresh, tmp_path):
    """Language i (keep-K/V) and its expert partner i (action-only) in one plan: nobody reads language i's
    K/V any more, so nothing of it stays; equal to both gates at 0; replays from disk."""
    ref = fresh(kind)
    with update_gates(layout(ref), ["language", "action"], 2) as gates:
        gates.set(("language", 2), 0.0)
        gates.set(("action", 2), 0.0)
        want = actions(ref)
    handle = wrap(fresh(kind))
    plan = handle.drop_blocks({"language": [2], "action": [2]})
    assert plan.mode == "keep_kv+action_only" and plan.kv_params["language"] == [0]
    assert is_kv_only(layout(handle.module).stacks["language"].blocks[2])
    torch.testing.assert_close(actions(handle.module), want, rtol=1e-5, atol=1e-6)
    handle.module.reset()
    assert torch.isfinite(handle.module.select_action(example_batch(handle.module, 1))).all()
    handle.save(tmp_path / "c")
    assert torch.equal(actions(load_policy(tmp_path / "c").module), actions(handle.module))


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"action": [0, 1, 2, 3]}, "action: the plan drops all 4 blocks of the stack"),
        ({"action": [4]}, r"action: block index \[4\] out of range; action has blocks 0..3"),
    ],
)
def test_bad_action_requests_are_refused(request_, message, fresh):
    model = fresh("smolvla")
    before = n_params(model)
    with pytest.raises(VlapruneError, match=message) as e:
        drop_blocks(model, request_)
    assert "\n" not in str(e.value) and n_params(model) == before


def test_an_expert_emptied_over_two_plans_is_refused(fresh):
    model = fresh("pi0")
    drop_blocks(model, {"action": [0, 1, 2]})
    with pytest.raises(VlapruneError, match="already removed"):
        drop_blocks(model, {"action": [1]})
    with pytest.raises(VlapruneError, match="action: the plan drops all 4 blocks"):
        drop_blocks(model, {"action": [3]})


def test_pair_mode_keeps_the_old_action_cut(fresh):
    plan = drop_blocks(fresh("pi0"), {"action": [1]}, mode="pair")
    assert plan.mode == "pair" and plan.drops == {"vision": [], "language": [1], "action": [1]}
