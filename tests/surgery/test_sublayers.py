"""Attention-only and MLP-only drops: the cut model equals the model with that sublayer's gate at 0.

The reference is the unpruned model under `virtual_gates(granularity="sublayer")` with gate (stack, i, part)
set to 0 (the branch output x 0). The pruned model must give the same actions and training loss, hold fewer
parameters, run select_action with its KV cache, and save / strictly reload.
"""

import json

import pytest
import torch

from tests.surgery.conftest import IDS, actions, logits, loss
from vlaprune.adapters import layout
from vlaprune.adapters.lerobot.batch import example_batch
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy, wrap
from vlaprune.scoring.gates import virtual_gates
from vlaprune.surgery import drop_blocks, drop_sublayers
from vlaprune.surgery.sublayers import removed_parts


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def gated_reference(model, stack, blocks, part, fn):
    with virtual_gates(layout(model), [stack], "sublayer") as gates:
        for i in blocks:
            gates.set((stack, i, part), 0.0)
        return fn(model)


CASES = [
    (kind, stack, part)
    for kind in ("smolvla", "pi0", "pi05")
    for stack in ("vision", "language", "action")
    for part in ("attn", "mlp")
]


@pytest.mark.parametrize("kind, stack, part", CASES)
def test_sublayer_drop_equals_the_gate_at_zero(kind, stack, part, fresh):
    ref = fresh(kind)
    blocks = [0] if stack == "vision" else [1, 2]
    unpruned = actions(ref)
    want_actions = gated_reference(ref, stack, blocks, part, actions)
    want_loss = gated_reference(ref, stack, blocks, part, loss)
    assert not torch.allclose(want_actions, unpruned, atol=1e-5)  # the sublayer matters
    policy = fresh(kind)
    plan = drop_sublayers(policy, {stack: blocks}, part)
    assert plan.part == part and plan.sublayers == {stack: blocks} and plan.mode == "sublayer"
    assert plan.blocks_after == plan.blocks_before and not any(plan.drops.values())
    assert plan.params_after < plan.params_before == n_params(ref)
    assert n_params(policy) == plan.params_after
    torch.testing.assert_close(actions(policy), want_actions, rtol=1e-5, atol=1e-6)
    got = loss(policy)
    torch.testing.assert_close(got, want_loss, rtol=1e-5, atol=1e-6)
    got.backward()
    assert all(removed_parts(layout(policy).stacks[stack].blocks[i]) == [part] for i in blocks)
    policy.reset()
    for _ in range(policy.config.n_action_steps + 1):  # select_action across a queue refill (KV cache)
        assert torch.isfinite(policy.select_action(example_batch(policy, 1))).all()


@pytest.mark.parametrize("part", ["attn", "mlp"])
def test_language_model_sublayer_drop(part, fresh):
    ref = fresh("llama")
    want = gated_reference(ref, "language", [1], part, logits)
    lm = fresh("llama")
    drop_sublayers(lm, {"language": [1]}, part)
    torch.testing.assert_close(logits(lm), want, rtol=1e-5, atol=1e-6)
    out = lm.generate(IDS, max_new_tokens=4, do_sample=False)  # the KV cache still indexes every layer
    assert out.shape == (1, IDS.shape[1] + 4)


def test_what_each_part_removes(fresh):
    policy = fresh("pi0")
    lay = layout(policy)
    vision, lang = lay.stacks["vision"].blocks[0], lay.stacks["language"].blocks[1]
    attn_all = n_params(vision.self_attn)
    o_proj, mlp = n_params(lang.self_attn.o_proj), n_params(lang.mlp)
    p = drop_sublayers(policy, {"vision": [0]}, "attn")
    assert p.params_before - p.params_after == attn_all and p.whole_attention == {"vision": True}
    assert "q/k/v/o projections" in p.summary()
    p = drop_sublayers(policy, {"language": [1]}, "attn")  # joint attention: only the output projection
    assert p.params_before - p.params_after == o_proj and p.whole_attention == {"language": False}
    assert "q/k/v stay" in p.summary()
    p = drop_sublayers(policy, {"language": [2]}, "mlp")
    assert p.params_before - p.params_after == mlp and "MLP removed" in p.summary()


@pytest.mark.parametrize("kind", ["smolvla", "pi05"])
def test_save_strict_reload_same_actions(kind, fresh, tmp_path):
    handle = wrap(fresh(kind))
    handle.drop_blocks({"language": [1]}, part="mlp")
    handle.drop_blocks({"vision": [0], "action": [2]}, part="attn")
    handle.drop_blocks({"language": [3]})  # a keep-K/V drop after the sublayer drops
    out = handle.save(tmp_path / "ckpt")
    saved = json.loads((out / "plan.json").read_text())
    assert [p["part"] for p in saved["plans"]] == ["mlp", "attn", "block"]
    loaded = load_policy(out)
    assert [p.part for p in loaded.record.plans] == ["mlp", "attn", "block"]
    assert n_params(loaded.module) == n_params(handle.module)
    assert torch.equal(actions(loaded.module), actions(handle.module))


@pytest.mark.parametrize(
    "setup, request_, part, message",
    [
        ({"language": [1]}, {"language": [1]}, "attn", "keeps only its K/V .* no attention left to remove"),
        (None, {"language": [7]}, "mlp", r"block index \[7\] out of range"),
        (None, {"language": [1]}, "ffn", "choose one of attn, mlp"),
    ],
)
def test_bad_sublayer_requests_are_refused(setup, request_, part, message, fresh):
    policy = fresh("pi0")
    if setup:
        drop_blocks(policy, setup)
    before = n_params(policy)
    with pytest.raises(VlapruneError, match=message) as e:
        drop_sublayers(policy, request_, part)
    assert "\n" not in str(e.value) and n_params(policy) == before


def test_a_removed_sublayer_cannot_go_twice(fresh):
    policy = fresh("smolvla")
    drop_sublayers(policy, {"action": [1]}, "mlp")
    before = n_params(policy)
    with pytest.raises(VlapruneError, match="MLP is already removed"):
        drop_sublayers(policy, {"action": [0, 1]}, "mlp")
    with pytest.raises(VlapruneError, match="leaves an empty block; drop it whole with --drop.part=block"):
        drop_sublayers(policy, {"action": [1]}, "attn")
    assert n_params(policy) == before and removed_parts(layout(policy).stacks["action"].blocks[0]) == []


def test_unit_pruning_refuses_a_removed_sublayer(fresh):
    from vlaprune.adapters.parts import attn_parts, ffn_parts

    policy = fresh("pi0")
    drop_sublayers(policy, {"action": [0]}, "mlp")
    drop_sublayers(policy, {"action": [1]}, "attn")
    blocks = layout(policy).stacks["action"].blocks
    with pytest.raises(VlapruneError, match="MLP was removed by an MLP-only drop"):
        ffn_parts(blocks[0])
    with pytest.raises(VlapruneError, match="removed by an attention-only drop"):
        attn_parts(blocks[1])
    assert ffn_parts(blocks[1])[0] is blocks[1].mlp and attn_parts(blocks[0])["n_q"] == 8
