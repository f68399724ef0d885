"""Keep-K/V drops (DTR's language drop in joint-attention VLAs): the block goes, its K/V stay for the expert.

The reference is the unpruned policy with language block i's residual update gated to 0 (hooks: the VLM
layer's o_proj and MLP outputs x 0; in SmolVLA / pi0 / pi0.5 the VLM and expert layers are separate modules,
so only the language tokens are affected). The pruned policy must give the same actions and loss.
"""

import contextlib
import json

import pytest
import torch

from tests.surgery.conftest import actions, loss
from vlaprune.adapters import layout
from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.adapters.lerobot.batch import example_batch
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy, wrap
from vlaprune.surgery import drop_blocks
from vlaprune.surgery.plan import plan_from_dict

POLICIES = ["smolvla", "pi0", "pi05"]


def language(policy):
    return layout(policy).stacks["language"].blocks


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def gated(policy, i):
    """Language block i's residual update set to 0: h_out = h_in for the language tokens only."""
    block = language(policy)[i]
    zero = lambda module, args, out: out * 0  # noqa: E731
    hooks = [block.self_attn.o_proj.register_forward_hook(zero), block.mlp.register_forward_hook(zero)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("kind", POLICIES)
@pytest.mark.parametrize("i", [0, 1])  # SmolVLA: 0 self-attention, 1 cross-attention
def test_keep_kv_drop_equals_the_gated_block(kind, i, fresh):
    ref = fresh(kind)
    unpruned = actions(ref)
    with gated(ref, i):
        want_actions, want_loss = actions(ref), loss(ref)
    assert not torch.allclose(want_actions, unpruned, atol=1e-4)  # the gate matters
    policy = fresh(kind)
    plan = drop_blocks(policy, {"language": [i]})
    assert plan.mode == "keep_kv" and plan.kv_only == {"language": [i]}
    assert not any(plan.drops.values()) and not plan.coupled
    torch.testing.assert_close(actions(policy), want_actions, rtol=1e-5, atol=1e-6)
    got_loss = loss(policy)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    got_loss.backward()  # trainable: the kept k/v projections get gradients through the expert
    k_proj = language(policy)[i].self_attn.k_proj.weight
    assert not k_proj.requires_grad or k_proj.grad.abs().sum() > 0  # SmolVLA trains the expert only
    policy.reset()
    for _ in range(policy.config.n_action_steps + 1):  # select_action across a queue refill (KV cache)
        assert torch.isfinite(policy.select_action(example_batch(policy, 1))).all()


@pytest.mark.parametrize("kind", POLICIES)
def test_the_expert_still_reads_the_kept_kv(kind, fresh):
    policy = fresh(kind)
    drop_blocks(policy, {"language": [1]})
    before, loss_before = actions(policy), loss(policy)
    with torch.no_grad():
        language(policy)[1].self_attn.k_proj.weight.mul_(3.0)
    assert not torch.allclose(actions(policy), before, atol=1e-4)
    assert not torch.allclose(loss(policy), loss_before)


@pytest.mark.parametrize("kind", POLICIES)
def test_what_stays_and_what_goes(kind, fresh):
    policy = fresh(kind)
    lay = layout(policy)
    full = language(policy)[2]
    kept = n_params(full.input_layernorm) + n_params(full.self_attn.k_proj) + n_params(full.self_attn.v_proj)
    removed = n_params(full) - kept
    expert = [n_params(b) for b in lay.stacks["action"].blocks]
    kinds = list(lay.stacks["language"].notes)
    plan = drop_blocks(policy, {"language": [2]})
    block = language(policy)[2]
    assert is_kv_only(block) and n_params(block) == kept == plan.kv_params["language"][0]
    kept_names = ("input_layernorm.", "self_attn.k_proj.", "self_attn.v_proj.")
    assert {n for n, _ in block.named_parameters()} == {
        n for n, _ in full.named_parameters() if n.startswith(kept_names)
    }
    assert plan.params_before - plan.params_after == removed == n_params(fresh(kind)) - n_params(policy)
    after = layout(policy)
    assert [n_params(b) for b in after.stacks["action"].blocks] == expert  # the expert keeps every block
    assert len(after.stacks["language"]) == 4 and plan.blocks_after == plan.blocks_before
    # the layer keeps its index: no block changes its attention kind (SmolVLA's self / cross alternation)
    notes = after.stacks["language"].notes
    assert "kv-only" in notes[2] and [n.replace(" (kv-only)", "") for n in notes] == (kinds or notes)
    assert "language 2: kept input norm + k/v projections" in plan.summary()


@pytest.mark.parametrize("kind", POLICIES)
def test_save_strict_reload_same_actions(kind, fresh, tmp_path):
    handle = wrap(fresh(kind))
    plan = handle.drop_blocks({"language": [0, 2]})
    out = handle.save(tmp_path / "ckpt")
    saved = json.loads((out / "plan.json").read_text())
    assert saved["plans"][0]["mode"] == "keep_kv" and saved["plans"][0]["kv_only"] == {"language": [0, 2]}
    assert not saved["family_loader_ok"] and saved["lerobot_type"] == f"vlaprune_{kind}"  # via the plugin
    loaded = load_policy(out)
    assert loaded.record.plans[0].kv_only == plan.kv_only
    assert n_params(loaded.module) == plan.params_after
    assert torch.equal(actions(loaded.module), actions(handle.module))
    assert torch.equal(actions(handle.copy().module), actions(handle.module))  # deep copies keep the override


def test_mixed_plan_replays_in_order(fresh, tmp_path):
    """pi0: language 1 kept as K/V, then (pair mode) action 2 goes whole with its lockstep partner; indices
    renumber and both plans replay from disk."""
    handle = wrap(fresh("pi0"))
    handle.drop_blocks({"language": [1]})
    plan = handle.drop_blocks({"action": [2]}, mode="pair")
    assert plan.drops == {"vision": [], "language": [2], "action": [2]}
    lay = layout(handle.module)
    assert [b.self_attn.layer_idx for b in lay.stacks["language"].blocks] == [0, 1, 2]
    assert [is_kv_only(b) for b in lay.stacks["language"].blocks] == [False, True, False]
    handle.save(tmp_path / "c")
    assert torch.equal(actions(load_policy(tmp_path / "c").module), actions(handle.module))


def test_language_block_goes_whole_with_its_dropped_partner_in_pair_mode(fresh):
    plan = drop_blocks(fresh("pi0"), {"language": [1], "action": [1]}, mode="pair")
    assert plan.mode == "pair" and not plan.kv_only
    assert plan.drops == {"vision": [], "language": [1], "action": [1]}


def test_pair_mode_keeps_the_old_behaviour(fresh):
    plan = drop_blocks(fresh("smolvla"), {"language": [2, 3]}, mode="pair")
    assert plan.mode == "pair" and plan.drops["action"] == [2, 3] and plan.blocks_after["language"] == 2
    with pytest.raises(VlapruneError, match="nearest valid plans"):
        drop_blocks(fresh("smolvla"), {"language": [1]}, mode="pair")


def test_unpartnered_block_keeps_nothing(fresh):
    """SmolVLA with 2 expert blocks for 4 VLM blocks: nothing reads VLM block 1, so nothing of it stays.
    (Self-attention every 4 blocks: lerobot's own fewer-experts model runs only where the expert blocks'
    kinds match their partners'.)"""
    kw = {"num_expert_layers": 2, "self_attn_every_n_layers": 4}
    ref = fresh("smolvla", **kw)
    with gated(ref, 1), gated(ref, 2):
        want_actions, want_loss = actions(ref), loss(ref)
    policy = fresh("smolvla", **kw)
    plan = drop_blocks(policy, {"language": [1, 2]})
    assert plan.kv_params["language"][0] == 0 < plan.kv_params["language"][1]
    assert "language 1: nothing kept" in plan.summary()
    torch.testing.assert_close(actions(policy), want_actions, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss(policy), want_loss, rtol=1e-5, atol=1e-6)


def test_a_kv_only_block_can_still_go_whole(fresh):
    policy = fresh("pi0")
    drop_blocks(policy, {"language": [1]})
    with pytest.raises(VlapruneError, match="already keep only their K/V.*--drop.mode=pair"):
        drop_blocks(policy, {"language": [1]})
    plan = drop_blocks(policy, {"language": [1]}, mode="pair")
    assert plan.drops["action"] == [1] and not any(map(is_kv_only, language(policy)))
    assert torch.isfinite(actions(policy)).all() and torch.isfinite(loss(policy))


@pytest.mark.parametrize(
    "kind, request_, mode, message",
    [
        ("smolvla", {"vision": [0]}, "keep_kv", "keep-K/V drop of vision: no other stack attends"),
        ("llama", {"language": [1]}, "keep_kv", "drop whole blocks with --drop.mode=pair"),
        ("pi0", {"language": [0, 1, 2, 3]}, "auto", "drops all 4 blocks of the stack (4 kept as K/V only)"),
        ("pi0", {"language": [1]}, "sideways", "choose one of auto, keep_kv, pair"),
    ],
)
def test_bad_keep_kv_requests_are_refused(kind, request_, mode, message, fresh):
    model = fresh(kind)
    before = n_params(model)
    with pytest.raises(VlapruneError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        drop_blocks(model, request_, mode=mode)
    assert "\n" not in str(e.value) and n_params(model) == before


def test_old_plans_read_as_pair_mode():
    old = {
        "family": "smolvla",
        "model_class": "SmolVLAPolicy",
        "drops": {"language": [2, 3], "action": [2, 3]},
        "requested": {"language": [2, 3]},
        "coupled": {"action": [2, 3]},
        "blocks_before": {"language": 4, "action": 4},
        "blocks_after": {"language": 2, "action": 2},
        "kind": "blocks",
    }
    plan = plan_from_dict(old)
    assert plan.mode == "pair" and plan.kv_only == {} and plan.kv_params == {}


@pytest.mark.parametrize("kw", [{}, {"num_expert_layers": 2, "self_attn_every_n_layers": 4}])
def test_smolvla_joint_forward_equals_lerobots_on_the_uncut_model(kw, fresh):
    """vlaprune's SmolVLA joint forward (installed by every in-place cut) gives lerobot's loss on an uncut
    model bit for bit (training runs lerobot's eager attention), and its actions up to the last bits: the
    denoising steps (`adapters.smolvla.denoise`) run a fused GQA attention, project the cached prefix K/V of
    cross-attention layers once per chunk and never copy the cache."""
    from vlaprune.adapters.smolvla import keep_kv as keep_kv_smolvla

    ref = fresh("smolvla", **kw)
    want_actions, want_loss = actions(ref), loss(ref)
    keep_kv_smolvla.install(ref.model.vlm_with_expert)
    got = actions(ref)
    torch.testing.assert_close(got, want_actions, rtol=1e-5, atol=1e-6)
    assert torch.equal(loss(ref), want_loss)
