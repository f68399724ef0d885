"""The multi-module unit spec: parsing, global selection with protected blocks, masked vs real removal."""

import copy

import pytest
import torch

from tests.surgery.conftest import actions
from vlaprune.adapters import layout
from vlaprune.errors import VlapruneError
from vlaprune.policy import wrap
from vlaprune.scoring import Probe
from vlaprune.scoring.units import CRITERIA, LEGACY, unit_scores
from vlaprune.surgery.ratios import Module, select
from vlaprune.surgery.spec import label, parse_spec
from vlaprune.surgery.units import mask_block, prune_heads
from vlaprune.tiny.vit import VisionTransformer

DEPTHS = {"language": 32, "vision": 4, "action": 4}


def parse(spec):
    return parse_spec(spec, DEPTHS, CRITERIA, LEGACY)


def test_spec_grammar_and_label_round_trip():
    mods = parse(
        "language.mlp=dw_openvla:high:0.2:global:protect=0-4,30,31 vision.attn=wanda:0.1;action.mlp=flap:0.3"
    )
    assert mods[0] == Module("language", "mlp", 0.2, "dw_openvla", "high", "global", (0, 1, 2, 3, 4, 30, 31))
    assert mods[1] == Module("vision", "attn", 0.1, "wanda", "low", "layer", ())
    assert mods[2].criterion == "flap"
    assert parse(" ".join(label(m) for m in mods)) == mods
    legacy = parse("language.mlp=dw_prune_high:0.3")[0]
    assert (legacy.criterion, legacy.direction) == ("dw", "high")


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("lang.mlp=dw:0.2", "no stack 'lang'"),
        ("language.ffn=dw:0.2", "unknown unit kind 'ffn'"),
        ("language.mlp=gradnorm:0.2", "unknown criterion 'gradnorm'"),
        ("language.mlp=dw:sideways:0.2", "unknown field 'sideways'"),
        ("language.mlp=dw:0.2:everywhere", "unknown field 'everywhere'"),
        ("language.mlp=dw:high", "has no ratio"),
        ("language.mlp=dw:1.0", "must be in [0, 1)"),
        ("language.mlp=dw:0.2:protect=30-40", "out of range (the stack has blocks 0-31)"),
        ("language.mlp=dw:0.2:protect=a-b", "is not a list like"),
        ("language.mlp=dw:0.2 language.mlp=wanda:0.1", "names language.mlp twice"),
        ("language.mlp", "is not STACK.mlp|attn=CRITERION"),
        ("", "--spec is empty"),
    ],
)
def test_spec_errors_are_one_line(spec, msg):
    with pytest.raises(VlapruneError) as e:
        parse(spec)
    assert msg in str(e.value) and "\n" not in str(e.value)


def planted_scores(n_blocks=4, n=16, hot_block=1, hot=range(4)):
    """'Movement' scores where block `hot_block` holds every strongly moved channel."""
    g = torch.Generator().manual_seed(0)
    blocks = [{"ffn": torch.rand(n, generator=g, dtype=torch.float64) * 0.1} for _ in range(n_blocks)]
    for c in hot:
        blocks[hot_block]["ffn"][c] = 10.0 + c
    return {"language": [{"ffn": -b["ffn"]} for b in blocks]}  # direction high: most moved scores lowest


def test_global_selection_takes_the_planted_channels_from_their_layer_only():
    scores = planted_scores()  # 64 channels; int(64 * 1/16) = 4 = the planted ones
    units = select(scores, [Module("language", "mlp", 1 / 16, "dw", "high", "global")])
    assert list(units["language"]) == ["1"]
    assert units["language"]["1"]["ffn"] == list(range(4, 16))
    # layer scope removes round(r * 16) = 1 channel from every block instead
    layer = select(scores, [Module("language", "mlp", 1 / 16, "dw", "high", "layer")])
    assert sorted(layer["language"]) == ["0", "1", "2", "3"]
    # protected blocks are never touched, and not ranked: the 3 open blocks hold 48 channels, 3 go
    prot = select(scores, [Module("language", "mlp", 1 / 16, "dw", "high", "global", (1,))])
    assert "1" not in prot["language"]
    assert sum(16 - len(s["ffn"]) for s in prot["language"].values()) == int(48 / 16)
    prot_layer = select(scores, [Module("language", "mlp", 0.25, "dw", "high", "layer", (0, 3))])
    assert sorted(prot_layer["language"]) == ["1", "2"]


def test_global_selection_refuses_to_empty_a_block():
    scores = planted_scores(hot=range(16))  # all of block 1 moved the most
    with pytest.raises(VlapruneError, match="global ranking removes all 16 language block 1 FFN channels"):
        select(scores, [Module("language", "mlp", 0.25, "dw", "high", "global")])


def test_global_heads_keep_grouped_query_attention_valid(fresh):
    policy = fresh("llama")  # 4 query heads in 2 KV groups, 2 blocks
    lay = layout(policy)
    sc = unit_scores(Probe(lay, ["language"], [], None), "magnitude", {"language": {"q", "kv"}})
    for heads in ("groups", "query"):
        units = select(sc, [Module("language", "attn", 0.25, "magnitude", scope="global")], heads)
        assert units["language"]
        h = wrap(policy).copy()
        plan = h.prune_units(units)
        assert plan.params_after < plan.params_before
        for spec in units["language"].values():
            assert len(spec["q"]) % len(spec["kv"]) == 0
        assert h.module(input_ids=torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_masked_and_real_removal_act_the_same(fresh):
    policy = fresh("pi05")
    lay = layout(policy)
    kinds = {"language": {"ffn"}, "vision": {"ffn", "q", "kv"}, "action": {"ffn"}}
    sc = unit_scores(Probe(lay, sorted(kinds), [], None), "magnitude", kinds)
    mods = [
        Module("language", "mlp", 0.3, scope="global"),
        Module("vision", "attn", 0.5),
        Module("action", "mlp", 0.2),
    ]
    units = select(sc, mods)
    real, masked = wrap(copy.deepcopy(policy)), wrap(copy.deepcopy(policy))
    p_real = real.prune_units(copy.deepcopy(units), "real")
    p_masked = masked.prune_units(copy.deepcopy(units), "masked")
    assert p_real.params_after < p_real.params_before and p_masked.params_after == p_masked.params_before
    a_real, a_masked, a0 = actions(real.module), actions(masked.module), actions(policy)
    assert torch.allclose(a_real, a_masked, atol=1e-5) and not torch.allclose(a_real, a0, atol=1e-3)


def test_masked_query_heads_of_a_coupled_stack(fresh, tmp_path):
    policy = fresh("pi05")
    lay = layout(policy)
    sc = unit_scores(Probe(lay, ["language"], [], None), "magnitude", {"language": {"q", "kv"}})
    units = select(sc, [Module("language", "attn", 0.25)], "query")  # 2 of 8 query heads, the KV head stays
    with pytest.raises(VlapruneError, match="mask its query heads instead"):
        wrap(copy.deepcopy(policy)).prune_units(copy.deepcopy(units), "real")
    h = wrap(policy)
    before = actions(h.module)
    h.prune_units(units, "masked", ["language.attn=magnitude:low:0.25:layer"])
    o = lay.stacks["language"].blocks[0].self_attn.o_proj.weight
    assert (o.abs().sum(0) == 0).sum() == 2 * 8  # two heads' columns
    after = actions(h.module)
    assert not torch.allclose(before, after)
    out = h.save(tmp_path / "masked")
    from vlaprune.policy import load_policy

    loaded = load_policy(out)
    assert loaded.record.plans[-1].removal == "masked" and loaded.record.plans[-1].spec
    assert torch.equal(actions(loaded.module), after)


def test_fused_qkv_heads_masked_equals_real():
    torch.manual_seed(0)
    vit = VisionTransformer(depth=2, embed_dim=32, num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    real, masked = copy.deepcopy(vit), copy.deepcopy(vit)
    prune_heads(real.blocks[0], [0, 2], [0, 2])
    mask_block(masked.blocks[0], {"q": [0, 2], "kv": [0, 2]})
    assert real.blocks[0].attn.qkv.out_features == 3 * 2 * 8 and real.blocks[0].attn.num_heads == 2
    with torch.no_grad():
        out = real(x)
        assert torch.allclose(out, masked(x), atol=1e-5) and not torch.allclose(out, vit(x), atol=1e-4)


def test_global_ties_spread_over_the_blocks():
    """An unmoved stack (all dW 0) loses units evenly under global ranking, not its first block whole."""
    scores = {"vision": [{"ffn": torch.zeros(8, dtype=torch.float64)} for _ in range(4)]}
    units = select(scores, [Module("vision", "mlp", 0.25, "dw", "low", "global")])
    assert {i: 8 - len(s["ffn"]) for i, s in units["vision"].items()} == {"0": 2, "1": 2, "2": 2, "3": 2}
