"""drop_blocks: a smaller model of the same class that still runs in every mode; coupling rules enforced."""

import pytest
import torch

from tests.surgery.conftest import actions, logits, loss
from vlaprune.adapters import layout
from vlaprune.errors import VlapruneError
from vlaprune.surgery import drop_blocks

POLICIES = ["smolvla", "pi0", "pi05"]


@pytest.mark.parametrize("kind", POLICIES)
def test_dropping_nothing_changes_nothing(kind, fresh):
    policy = fresh(kind)
    a, lo = actions(policy), loss(policy)
    plan = drop_blocks(policy, {})
    assert plan.params_after == plan.params_before
    assert torch.equal(actions(policy), a) and torch.equal(loss(policy), lo)


def test_dropping_nothing_changes_nothing_lm(fresh):
    lm = fresh("llama")
    before = logits(lm)
    drop_blocks(lm, {})
    assert torch.equal(logits(lm), before)


@pytest.mark.parametrize(
    "kind, request_, mode, after",
    [
        ("smolvla", {"language": [2, 3]}, "pair", {"vision": 2, "language": 2, "action": 2}),
        ("smolvla", {"vision": [0]}, "auto", {"vision": 1, "language": 4, "action": 4}),
        ("pi0", {"language": [1], "vision": [1]}, "pair", {"vision": 1, "language": 3, "action": 3}),
        (
            "pi0",
            {"language": [1], "vision": [1]},
            "auto",
            {"vision": 1, "language": 4, "action": 4},
        ),  # keep-K/V
        ("pi05", {"action": [0, 3]}, "pair", {"vision": 2, "language": 2, "action": 2}),
        ("pi05", {"action": [0, 3]}, "auto", {"vision": 2, "language": 4, "action": 4}),  # action-only
    ],
)
def test_after_a_drop_everything_runs(kind, request_, mode, after, fresh):
    policy = fresh(kind)
    plan = drop_blocks(policy, request_, mode=mode)
    lay = layout(policy)
    assert {n: len(s) for n, s in lay.stacks.items()} == after == plan.blocks_after
    assert plan.params_after < plan.params_before == sum(p.numel() for p in fresh(kind).parameters())
    assert plan.params_after == sum(p.numel() for p in policy.parameters())
    for s in lay.stacks.values():
        for c in s.counters:  # SmolVLA's config.num_expert_layers = -1 ("as many as the VLM") until a drop
            assert getattr(c.owner, c.attr) in (len(s), -1 if c.attr == "num_expert_layers" else len(s))
        if s.layer_idx_attr:
            assert [b.self_attn.layer_idx for b in s.blocks] == list(range(len(s)))
    lo = loss(policy)
    lo.backward()
    assert torch.isfinite(lo)
    a = actions(policy)
    assert a.shape == (2, policy.config.chunk_size, 4) and torch.isfinite(a).all()
    policy.reset()
    from vlaprune.adapters.lerobot.batch import example_batch

    for _ in range(policy.config.n_action_steps + 1):  # crosses a queue refill: KV cache path twice
        assert policy.select_action(example_batch(policy, 1)).shape == (1, 4)


def test_lockstep_drops_the_partner_in_pair_mode(fresh):
    policy = fresh("pi0")
    plan = drop_blocks(policy, {"action": [2]}, mode="pair")
    assert plan.drops == {"vision": [], "language": [2], "action": [2]}
    assert plan.requested == {"action": [2]} and plan.coupled == {"language": [2]}


def test_qwen2_drop_keeps_layer_types_and_generates(fresh):
    lm = fresh("qwen2")
    drop_blocks(lm, {"language": [0, 2]})
    assert lm.config.num_hidden_layers == 2 and len(lm.config.layer_types) == 2
    assert [b.self_attn.layer_idx for b in lm.model.layers] == [0, 1]
    out = lm.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)  # uses the KV cache
    assert out.shape == (1, 7)


def test_smolvla_fewer_expert_layers(fresh):
    policy = fresh("smolvla", num_expert_layers=2)  # expert j runs with VLM block 2j
    with pytest.raises(VlapruneError, match="not a multiple"):
        drop_blocks(policy, {"language": [1]}, mode="pair")
    plan = drop_blocks(policy, {"language": [2, 3]}, mode="pair")  # VLM 2 goes -> its partner 1 goes too
    assert plan.drops["action"] == [1] and plan.blocks_after == {"vision": 2, "language": 2, "action": 1}
    assert torch.isfinite(loss(policy)) and torch.isfinite(actions(policy)).all()


@pytest.mark.parametrize(
    "kind, request_, message",
    [
        ("smolvla", {"vision": [0, 1]}, "drops all 2 blocks"),
        ("pi0", {"language": [0, 1, 2, 3]}, "drops all 4 blocks"),
        ("smolvla", {"language": [4]}, "out of range; language has blocks 0..3"),
        ("smolvla", {"language": [-1]}, "out of range"),
        ("pi0", {"vision": [1, 1]}, "listed twice"),
        ("smolvla", {"brain": [0]}, "no stack 'brain'"),
        ("smolvla", {"language": [1]}, "nearest valid plans: --drop.language=0,1 --drop.action=0,1"),
    ],
)
def test_bad_plans_are_refused_before_any_change(kind, request_, message, fresh):
    policy = fresh(kind)
    before = sum(p.numel() for p in policy.parameters())
    with pytest.raises(VlapruneError, match=message.replace(".", r"\.").replace("(", r"\(")):
        drop_blocks(policy, request_, mode="pair")  # pair mode: the coupling rules apply to language drops
    assert sum(p.numel() for p in policy.parameters()) == before


def test_coupling_message_states_the_rule(fresh):
    with pytest.raises(VlapruneError) as e:
        drop_blocks(fresh("smolvla"), {"language": [1]}, mode="pair")
    msg = str(e.value)
    assert "switch from self-attn to cross-attn" in msg and "self-attn if i % 2 == 0" in msg
    assert "\n" not in msg
