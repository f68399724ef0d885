"""Linears on oneDNN-packed weights (`adapters.packed`) and the SmolVLA denoising-step pieces built on them
(`adapters.smolvla.denoise`): equal to the plain modules, and never used where a hook or autograd must see
the call."""

import pytest
import torch
from torch import nn

from vlaprune.adapters import packed
from vlaprune.adapters.smolvla import denoise

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def pack_small_weights(monkeypatch):
    """The tests' layers are far below the size where packing pays: pack them anyway."""
    monkeypatch.setattr(packed, "MIN_PACKED", 0)


def layers(*outs, k=24, bias=False):
    torch.manual_seed(0)
    return tuple(nn.Linear(k, n, bias=bias) for n in outs)


@pytest.mark.parametrize("bias", [False, True])
def test_grouped_packed_linears_equal_each_layer(bias):
    group, x = layers(16, 8, 8, bias=bias), torch.randn(2, 5, 24)
    with torch.no_grad():
        got, want = packed.linears(group, x), [m(x) for m in group]
    assert packed.packable(group[0]) is False  # outside no_grad: autograd must see the call
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    entry = packed._PACKED[group[0]]  # it did run packed
    with torch.no_grad():
        packed.linears(group, x)
    assert packed._PACKED[group[0]] is entry  # and packs once, not per call


def test_small_weights_get_the_plain_call(monkeypatch):
    monkeypatch.setattr(packed, "MIN_PACKED", 16 * 24 + 1)  # one element more than the group below
    group, x = layers(8, 8), torch.randn(3, 24)
    with torch.no_grad():
        got = packed.linears(group, x)
    assert group[0] not in packed._PACKED
    for g, m in zip(got, group):
        assert torch.equal(g, m(x))
    monkeypatch.setattr(packed, "MIN_PACKED", 16 * 24)
    with torch.no_grad():
        packed.linears(group, x)
    assert group[0] in packed._PACKED


def test_a_weight_updated_in_place_is_packed_again():
    (layer,), x = layers(8), torch.randn(3, 24)
    with torch.no_grad():
        before = packed.linear(layer, x)
        layer.weight.mul_(2.0)  # what an optimizer step does: same tensor, new version
        after = packed.linear(layer, x)
    torch.testing.assert_close(after, 2 * before, rtol=1e-5, atol=1e-6)


def test_hooks_and_autograd_get_the_plain_call():
    (layer,), x = layers(8), torch.randn(3, 24)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        packed.linear(layer, x)
    handle.remove()
    glob = nn.modules.module.register_module_forward_pre_hook(lambda m, i: seen.append(m))
    with torch.no_grad():
        packed.linear(layer, x)
    glob.remove()
    assert len(seen) == 2 and layer not in packed._PACKED
    y = packed.linear(layer, x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None


def test_rope_is_lerobots_bit_for_bit():
    from lerobot.policies.smolvla.smolvlm_with_expert import apply_rope

    x, pos = torch.randn(2, 7, 4, 16), torch.arange(3, 10)[None].expand(2, 7)
    assert torch.equal(denoise.rope(x, denoise.rope_tables(pos, 16)), apply_rope(x, pos))


def test_attention_equals_eager_gqa():
    """`attend` (query heads of one K/V head stacked, additive mask) against the eager formula with the
    K/V heads repeated as `repeat_kv` does."""
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 5, 8, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.rand(2, 5, 9) > 0.3
    mask[..., 0] = True
    got = denoise.attend(q, k, v, {"mask": mask})
    kr, vr = (t.repeat_interleave(4, dim=1) for t in (k, v))  # head h reads K/V head h // 4
    scores = (q.transpose(1, 2) @ kr.transpose(-1, -2)) * 16**-0.5
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    want = (scores.softmax(-1) @ vr).transpose(1, 2).reshape(2, 5, -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fused_norm_equals_llamas():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    layer = LlamaRMSNorm(32, eps=1e-5)
    nn.init.normal_(layer.weight)
    x = torch.randn(3, 4, 32)
    torch.testing.assert_close(denoise.norm(layer, x), layer(x), rtol=1e-5, atol=1e-6)
