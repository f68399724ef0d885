"""The prefill of a run of kv-only layers in one pass (`adapters.smolvla.prefill`) writes the KV cache the
layer-by-layer prefill writes, so a cut SmolVLA's actions do not change; it is taken where it can be and
re-stacks weights that changed."""

import contextlib

import pytest
import torch

from vlaprune.adapters.lerobot.batch import example_batch
from vlaprune.adapters.smolvla import prefill
from vlaprune.surgery import drop_blocks
from vlaprune.tiny.smolvla import tiny_smolvla


def chunk(policy):
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        policy.reset()
        return policy.predict_action_chunk(example_batch(policy, 2))


@contextlib.contextmanager
def layer_by_layer():
    """The one-pass prefill turned off: every kv-only layer runs on its own (`keep_kv._kv_only_joint`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prefill, "fusable", lambda blocks, hidden: False)
        yield


@contextlib.contextmanager
def counted_fills():
    calls, fill = [], prefill.fill
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            prefill, "fill", lambda blocks, idxs, *a: (calls.append(list(idxs)), fill(blocks, idxs, *a))[1]
        )
        yield calls


def cut(smolvlm_dir, blocks, **kw):
    policy = tiny_smolvla(smolvlm_dir, **kw)
    drop_blocks(policy, {"language": blocks})
    return policy


@pytest.mark.parametrize(
    ("kw", "blocks", "runs"),
    [
        ({}, [1, 2, 3], [[1, 2, 3]]),  # self- and cross-attention layers in one run
        ({}, [0, 1, 3], [[0, 1], [3]]),  # two runs around a full block (one of one layer: not fused)
        ({"num_expert_layers": 2, "self_attn_every_n_layers": 4}, [1, 2, 3], [[2]]),  # only what is read
    ],
)
def test_one_pass_equals_layer_by_layer(smolvlm_dir, kw, blocks, runs):
    policy = cut(smolvlm_dir, blocks, **kw)
    with layer_by_layer():
        want = chunk(policy)
    with counted_fills() as calls:
        got = chunk(policy)
    fused = [r for r in runs if len(r) > 1]
    assert calls == fused  # taken for every run of two or more layers, once per chunk
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_fused_run_equals_the_gated_blocks(smolvlm_dir):
    """Independent of either prefill: the uncut policy with language blocks 1-3's residual updates gated to
    0 (their o_proj and MLP outputs x 0) gives the cut's actions (DTR's keep-K/V drop)."""
    ref = tiny_smolvla(smolvlm_dir)
    layers = ref.model.vlm_with_expert.get_vlm_model().text_model.layers
    zero = lambda module, args, out: out * 0  # noqa: E731
    hooks = [
        m.register_forward_hook(zero) for i in (1, 2, 3) for m in (layers[i].self_attn.o_proj, layers[i].mlp)
    ]
    want = chunk(ref)
    for h in hooks:
        h.remove()
    assert not torch.allclose(want, chunk(ref), atol=1e-4)  # the gates matter
    with counted_fills() as calls:
        got = chunk(cut(smolvlm_dir, [1, 2, 3]))
    assert calls == [[1, 2, 3]]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_cache_holds_the_same_keys_and_values(smolvlm_dir):
    policy = cut(smolvlm_dir, [1, 2, 3])
    vwe, caches = policy.model.vlm_with_expert, []
    forward = vwe.forward

    def keep(*args, **kwargs):
        out = forward(*args, **kwargs)
        if kwargs["inputs_embeds"][0] is not None:
            caches.append([(layer.keys.clone(), layer.values.clone()) for layer in out[1].layers])
        return out

    vwe.forward = keep
    with layer_by_layer():
        chunk(policy)
    chunk(policy)
    vwe.forward = forward
    (want, got) = caches
    assert len(want) == len(got) == 4
    for (k0, v0), (k1, v1) in zip(want, got):
        torch.testing.assert_close(k1, k0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-6)


def test_changed_weights_are_restacked(smolvlm_dir):
    policy = cut(smolvlm_dir, [1, 2, 3])
    before = chunk(policy)  # stacks the run's weights
    layer = policy.model.vlm_with_expert.get_vlm_model().text_model.layers[2]
    with torch.no_grad():
        layer.self_attn.v_proj.weight.mul_(3.0)  # in place: same tensor, new version
        layer.input_layernorm.weight.add_(0.5)
    got = chunk(policy)
    with layer_by_layer():
        want = chunk(policy)
    assert not torch.allclose(got, before, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_not_taken_with_autograd_or_another_dtype(smolvlm_dir):
    blocks = cut(smolvlm_dir, [1, 2, 3]).model.vlm_with_expert.get_vlm_model().text_model.layers[1:]
    hidden = torch.randn(1, 5, blocks[0].input_layernorm.weight.shape[0])
    with torch.no_grad():
        assert prefill.fusable(list(blocks), hidden)
        assert not prefill.fusable(list(blocks), hidden.double())
        assert not prefill.fusable(list(blocks[:1]), hidden)
    with torch.enable_grad():
        assert not prefill.fusable(list(blocks), hidden)
