"""Adapters find the right stacks, block counts, parameter totals and coupling rules in lerobot policies."""

import pytest
import torch

from vlaprune.adapters import family, layout
from vlaprune.adapters.anatomy import anatomy


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_totals(model, anat):
    """Stacks + non-block parts + other == every parameter of the model, each counted once."""
    rows = sum(s["params"] for s in anat["stacks"]) + sum(r["params"] for r in anat["parts"])
    assert rows + anat["other"]["params"] == numel(model) == anat["total_params"]
    assert anat["other"]["params"] >= 0


def test_smolvla_stacks(smolvla):
    assert family(smolvla) == "smolvla"
    lay = layout(smolvla)
    assert {n: len(s) for n, s in lay.stacks.items()} == {"vision": 2, "language": 4, "action": 4}
    vwe = smolvla.model.vlm_with_expert
    assert lay.stacks["language"].blocks is vwe.vlm.model.text_model.layers
    assert lay.stacks["action"].blocks is vwe.lm_expert.layers
    assert lay.stacks["vision"].blocks is vwe.vlm.model.vision_model.encoder.layers
    for name, s in lay.stacks.items():
        assert s.component == name
        assert smolvla.get_submodule(s.path) is s.blocks
    # self-attention on even VLM blocks, cross-attention on odd ones (self_attn_every_n_layers=2)
    assert lay.stacks["language"].notes == ["self-attn", "cross-attn", "self-attn", "cross-attn"]
    (c,) = lay.couplings
    assert (c.kind, c.a, c.b, c.pairs) == ("paired", "language", "action", [0, 1, 2, 3])


def test_smolvla_counters_match_block_counts(smolvla):
    for s in layout(smolvla).stacks.values():
        assert s.counters, s.name
        for c in s.counters:
            value = getattr(c.owner, c.attr)
            # SmolVLA's config.num_expert_layers = -1 means "as many as the VLM"
            assert value == len(s) or (
                c.attr == "num_expert_layers" and value == -1 and c.where.startswith("config")
            )


def test_smolvla_fewer_expert_layers_pairs_every_kth(smolvlm_dir):
    from vlaprune.tiny.smolvla import tiny_smolvla

    policy = tiny_smolvla(smolvlm_dir, num_expert_layers=2)
    lay = layout(policy)
    assert len(lay.stacks["action"]) == 2 and len(lay.stacks["language"]) == 4
    assert lay.couplings[0].pairs == [0, 2]
    check_totals(policy, anatomy(lay, flops=False))


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_pi_stacks(kind, request):
    policy = request.getfixturevalue(kind)
    assert family(policy) == kind
    lay = layout(policy)
    assert {n: len(s) for n, s in lay.stacks.items()} == {"vision": 2, "language": 4, "action": 4}
    pwe = policy.model.paligemma_with_expert
    assert lay.stacks["language"].blocks is pwe.paligemma.model.language_model.layers
    assert lay.stacks["action"].blocks is pwe.gemma_expert.model.layers
    (c,) = lay.couplings
    assert (c.kind, c.pairs) == ("lockstep", [0, 1, 2, 3])
    for s in lay.stacks.values():
        assert all(getattr(c.owner, c.attr) == len(s) for c in s.counters)
    assert lay.stacks["language"].layer_idx_attr == "self_attn.layer_idx"


@pytest.mark.parametrize("kind", ["smolvla", "pi0", "pi05"])
def test_policy_param_totals(kind, request):
    policy = request.getfixturevalue(kind)
    lay = layout(policy)
    anat = anatomy(lay, flops=False)
    check_totals(policy, anat)
    for row in anat["stacks"]:
        blocks = lay.stacks[row["name"]].blocks
        assert row["block_params"] == [numel(b) for b in blocks]
        assert row["params"] == numel(blocks)
    parts = {r["component"] for r in anat["parts"]}
    assert {"vision", "projector", "language", "action"} <= parts
