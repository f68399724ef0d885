"""FLOP attribution agrees with torch's own FlopCounterMode and charges parent-code ops to the right block."""

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vlaprune.adapters import layout
from vlaprune.adapters.anatomy import anatomy
from vlaprune.adapters.counting import count_flops, unique_params


def torch_flops(forward):
    """Total and per-module FLOPs from torch's counter (math attention, as count_flops uses)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        forward()
    return fc.get_total_flops(), {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}


def test_decoder_lm_blocks_match_torch_per_module(llama):
    lay = layout(llama)
    anat = anatomy(lay)
    total, per_module = torch_flops(lay.forward)
    assert anat["total_flops"] == total
    row = anat["stacks"][0]
    assert row["block_flops"] == [per_module[f"LlamaForCausalLM.model.layers.{i}"] for i in range(4)]
    assert row["flops"] + anat["other"]["flops"] == total


@pytest.mark.parametrize("kind", ["smolvla", "pi0", "pi05"])
def test_policy_flops_lose_nothing(kind, request):
    policy = request.getfixturevalue(kind)
    lay = layout(policy)
    anat = anatomy(lay)
    total, _ = torch_flops(lay.forward)
    assert anat["total_flops"] == total > 0
    rows = sum(s["flops"] for s in anat["stacks"]) + sum(r["flops"] for r in anat["parts"])
    assert rows + anat["other"]["flops"] == total
    for s in anat["stacks"]:
        assert all(f > 0 for f in s["block_flops"]), s["name"]
    pct = sum(s["flops_pct"] for s in anat["stacks"]) + sum(r["flops_pct"] for r in anat["parts"])
    assert pct + anat["other"]["flops_pct"] == pytest.approx(100, abs=0.01)


class Toy(nn.Module):
    """Parent code does attention-like math between two children, as lerobot's VLAs do."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        q = self.a(x)  # (4, 8)
        s = q @ q.T  # (4, 4): charged to the region of `a`, the module entered last
        y = self.b(s @ q)
        return self.head(y)


def test_parent_code_ops_go_to_last_entered_region():
    m, x = Toy(), torch.randn(4, 8)
    counts = count_flops(m, lambda: m(x), {m.a: "A", m.b: "B"})
    mm = 2 * 4 * 8 * 8  # one (4, 8) @ (8, 8)
    assert counts["A"] == mm + 2 * 4 * 8 * 4 + 2 * 4 * 4 * 8  # a, q @ q.T, s @ q
    assert counts["B"] == mm
    assert counts[None] == 2 * 4 * 8 * 2  # head is outside every region


def test_unique_params_shares_seen_set():
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, lin)
    seen: set[int] = set()
    assert unique_params(seq, seen) == 12
    assert unique_params(lin, seen) == 0
