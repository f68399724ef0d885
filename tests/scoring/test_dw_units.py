"""The dW unit criteria (vlaprune's reconstruction and the divergence paper's public-code recipes) against a
direct computation, on pairs of small checkpoints with planted changes: an OpenVLA-shaped model (Llama +
a timm-style ViT with fused qkv) and a pi0.5-shaped policy (Gemma with one KV head)."""

import pytest
import torch
from torch import nn

from vlaprune.adapters import layout
from vlaprune.scoring import Probe
from vlaprune.scoring.dw_units import movement
from vlaprune.scoring.units import dw_reconstruction, unit_scores
from vlaprune.tiny.hf import tiny_decoder_lm
from vlaprune.tiny.pi import tiny_pi
from vlaprune.tiny.vit import VisionTransformer


def rownorm(w, dim=1):
    return torch.stack([w[i].norm() for i in range(w.shape[0])]) if dim == 1 else rownorm(w.T)


def pair(model: nn.Module, plant) -> tuple[nn.Module, dict]:
    """(the 'VLA': model with planted changes, the 'VLM': its weights before them, by parameter name)."""
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        plant(model)
    return model, base


def base_fn(model, base):
    names = {id(p): n for n, p in model.named_parameters()}
    return lambda lin: base[names[id(lin.weight)]]


@pytest.fixture
def openvla_like():
    torch.manual_seed(0)
    lm, vit = tiny_decoder_lm("llama"), VisionTransformer(depth=3, embed_dim=32, num_heads=4)
    return nn.ModuleDict({"lm": lm, "vit": vit})


def test_openvla_recipe_llm_and_fused_vision(openvla_like):
    def plant(m):
        mlp = m["lm"].model.layers[1].mlp
        mlp.gate_proj.weight[3] *= 3.0  # channel 3: gate row moved
        mlp.down_proj.weight[:, 7] *= 2.0  # channel 7: down column moved
        mlp.up_proj.weight[9] += 0.5  # channel 9: up row moved
        attn = m["lm"].model.layers[1].self_attn
        d = attn.head_dim
        attn.q_proj.weight[1 * d : 2 * d] *= 2.0  # query head 1
        blk = m["vit"].blocks[2]
        blk.mlp.fc1.weight[5] *= 4.0  # vision channel 5 via fc1
        blk.mlp.fc2.weight[:, 6] *= 4.0  # vision channel 6 only via fc2 (the recipe reads fc1 rows only)
        n, hd = blk.attn.num_heads, blk.attn.head_dim
        blk.attn.qkv.weight[n * hd + 2 * hd : n * hd + 3 * hd] *= 3.0  # k rows of vision head 2

    model, base = pair(openvla_like, plant)
    b = base_fn(model, base)
    mlp, attn = model["lm"].model.layers[1].mlp, model["lm"].model.layers[1].self_attn
    got = movement(model["lm"].model.layers[1], {"ffn", "q", "kv"}, "dw_openvla", b)

    def rel(lin, dim=1):
        w0 = base[[n for n, p in model.named_parameters() if p is lin.weight][0]]
        return rownorm(lin.weight - w0, dim) / (rownorm(w0, dim) + 1e-8)

    direct = rel(mlp.gate_proj) + rel(mlp.up_proj) + rel(mlp.down_proj, 0)
    assert torch.allclose(got["ffn"], direct.double(), rtol=1e-5, atol=1e-7)
    assert set(torch.topk(got["ffn"], 3).indices.tolist()) == {3, 7, 9}
    d = attn.head_dim
    heads = rel(attn.q_proj).reshape(-1, d).mean(1)
    assert torch.allclose(got["q"], heads.double(), rtol=1e-5, atol=1e-7) and int(got["q"].argmax()) == 1
    assert not got["kv"].any()  # the recipe scores heads by their q rows only

    blk = model["vit"].blocks[2]
    v = movement(blk, {"ffn", "q"}, "dw_openvla", b)
    assert int(v["ffn"].argmax()) == 5 and v["ffn"][6] == 0  # fc1 rows only
    qkv = rel(blk.attn.qkv).reshape(3, blk.attn.num_heads, -1).mean((0, 2))  # q, k and v rows of each head
    assert torch.allclose(v["q"], qkv.double(), rtol=1e-5, atol=1e-7) and int(v["q"].argmax()) == 2
    ours = dw_reconstruction(blk, {"ffn"}, b)  # vlaprune's reconstruction sees the fc2 column too
    assert set(torch.topk(ours["ffn"], 2).indices.tolist()) == {5, 6}
    for block in [*model["lm"].model.layers, *model["vit"].blocks]:  # untouched blocks did not move
        if block is not model["lm"].model.layers[1] and block is not blk:
            assert not movement(block, {"ffn"}, "dw_openvla", b)["ffn"].any()


def test_pi05_recipe_absolute_gate_rows_and_gqa_heads():
    policy = tiny_pi("pi05")
    text = policy.model.paligemma_with_expert.paligemma.model.language_model

    def plant(m):
        layer = text.layers[2]
        layer.mlp.gate_proj.weight[4] += 0.3  # channel 4 via gate
        layer.mlp.up_proj.weight[11] += 5.0  # channel 11 via up only: the recipe reads gate rows only
        d = layer.self_attn.head_dim
        layer.self_attn.q_proj.weight[6 * d : 7 * d] += 0.2  # query head 6
        layer.self_attn.k_proj.weight += 0.1  # the one KV head: lifts every query head alike

    model, base = pair(policy, plant)
    lay = layout(model)
    probe = Probe(lay, ["language"], [], None)
    kinds = {"language": {"ffn", "q", "kv"}}
    sc = unit_scores(probe, "dw_pi05", kinds, dw_lookup=base.get, direction="high")["language"]
    layer = text.layers[2]
    names = {id(p): n for n, p in model.named_parameters()}

    def absdw(lin):
        return rownorm(lin.weight - base[names[id(lin.weight)]])

    assert torch.allclose(-sc[2]["ffn"], absdw(layer.mlp.gate_proj).double(), atol=1e-6)
    assert int(sc[2]["ffn"].argmin()) == 4 and sc[2]["ffn"][11] == 0  # high: most moved scores lowest
    d, a = layer.self_attn.head_dim, layer.self_attn
    direct = (absdw(a.q_proj).reshape(8, d).mean(1) + absdw(a.k_proj).mean()) / 2
    assert torch.allclose(-sc[2]["q"], direct.double(), atol=1e-6) and int(sc[2]["q"].argmin()) == 6
    assert (-sc[2]["q"] > 0).all()  # the shared KV head's movement counts for every query head
    for i in (0, 1, 3):
        assert not sc[i]["ffn"].any() and not sc[i]["q"].any()
    low = unit_scores(probe, "dw_pi05", kinds, dw_lookup=base.get, direction="low")["language"]
    assert torch.equal(low[2]["ffn"], -sc[2]["ffn"])
    ours = unit_scores(probe, "dw", kinds, dw_lookup=base.get)["language"][2]["ffn"]
    assert int(ours.argmax()) == 11  # vlaprune's reconstruction: relative change over gate, up and down


def test_dw_needs_the_unpruned_shapes():
    policy = tiny_pi("pi05")
    base = {n: p.detach().clone()[:-1] for n, p in policy.named_parameters()}  # a mismatched "VLM"
    probe = Probe(layout(policy), ["language"], [], None)
    from vlaprune.errors import VlapruneError

    with pytest.raises(VlapruneError, match="dW needs the unpruned model"):
        unit_scores(probe, "dw_openvla", {"language": {"ffn"}}, dw_lookup=base.get)
    with pytest.raises(VlapruneError, match="need the base VLM"):
        unit_scores(probe, "dw_pi05", {"language": {"ffn"}})


def test_flap_is_input_fluctuation_times_column_norm_and_its_compensation_keeps_the_mean(probe_for):
    """FLAP scores against a direct computation from hooked activations; with bias compensation, a masked
    cut leaves the block's mean MLP output over the calibration tokens unchanged."""
    from vlaprune.scoring.units import bias_compensation, input_stats
    from vlaprune.surgery.ratios import Module, select
    from vlaprune.surgery.units import apply_units

    policy = tiny_pi("pi05")
    probe = probe_for(policy)
    mlp = probe.layout.stacks["action"].blocks[1].mlp
    seen, outs = [], []
    h1 = mlp.down_proj.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1]))
    )
    h2 = mlp.register_forward_hook(lambda m, a, o: outs.append(o.detach().reshape(-1, o.shape[-1])))
    probe.mean_loss()
    h1.remove(), h2.remove()
    x = torch.cat(seen).double()
    direct = x.var(0, unbiased=False) * mlp.down_proj.weight.detach().double().square().sum(0)
    kinds = {"action": {"ffn"}}
    stats = input_stats(probe, kinds)
    sc = unit_scores(probe, "flap", kinds, stats=stats)["action"][1]["ffn"]
    assert torch.allclose(sc, direct, rtol=1e-4, atol=1e-10)
    before = torch.cat(outs).double().mean(0)
    picked = select({"action": sc_all(probe, stats)}, [Module("action", "mlp", 0.5)])
    units = {"action": {"1": picked["action"]["1"]}}  # cut block 1 only: its inputs stay the same
    deltas = bias_compensation(probe.layout, units, stats, [("action", "mlp")])
    apply_units(probe.layout, units, "masked")
    outs.clear()
    h2 = mlp.register_forward_hook(lambda m, a, o: outs.append(o.detach().reshape(-1, o.shape[-1])))
    probe.mean_loss()
    uncompensated = torch.cat(outs).double().mean(0)
    with torch.no_grad():
        mlp.down_proj.bias += deltas[("action", 1, "mlp.down_proj")]
    outs.clear()
    probe.mean_loss()
    h2.remove()
    after = torch.cat(outs).double().mean(0)
    assert (mlp.down_proj.weight.abs().sum(0) == 0).sum() == 48
    assert not torch.allclose(uncompensated, before, atol=1e-4)
    assert torch.allclose(after, before, atol=1e-5)


def sc_all(probe, stats):
    return unit_scores(probe, "flap", {"action": {"ffn"}}, stats=stats)["action"]
