"""The branch gate's gradient (gateprobe_branch) is the derivative of the mean loss in g; leave-one-out is
the loss of the removed block; data methods are reproducible. The paper's GateProbe: test_gateprobe_paper.py.
"""

import pytest
import torch

from vlaprune.scoring import METHODS
from vlaprune.scoring.gateprobe import gate_gradients
from vlaprune.scoring.gates import branch_modules, virtual_gates

POLICIES = ["smolvla", "pi0", "pi05"]
EPS = 1e-3
# float32 loss ~2.0 has ~2e-7 resolution; a central difference over 2*EPS adds ~1e-4 absolute noise
ATOL, RTOL = 5e-4, 2e-2


def loss_at(probe, key, value):
    with virtual_gates(probe.layout, probe.stacks, probe.granularity) as gates:
        gates.set(key, value)
        return probe.mean_loss()


@pytest.mark.parametrize("kind", POLICIES)
@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_gradient_matches_central_difference(kind, granularity, request, probe_for):
    policy = request.getfixturevalue(kind)
    probe = probe_for(policy, granularity=granularity)
    grads = gate_gradients(probe)
    keys = [k for k in grads if k[1] in (0, 1)]  # first two blocks of every stack (and both sublayers)
    assert {k[0] for k in keys} == {"vision", "language", "action"}
    for key in keys:
        fd = (loss_at(probe, key, 1 + EPS) - loss_at(probe, key, 1 - EPS)) / (2 * EPS)
        assert grads[key] == pytest.approx(fd, abs=ATOL, rel=RTOL), key
    assert any(abs(g) > 10 * ATOL for g in grads.values())  # the check is not vacuous


@pytest.mark.parametrize("method", ["gateprobe", "gateprobe_branch"])
def test_gateprobe_leaves_no_weight_grads(method, smolvla, probe_for):
    probe = probe_for(smolvla)
    flags = [p.requires_grad for p in smolvla.parameters()]
    METHODS[method](probe)
    assert all(p.grad is None for p in smolvla.parameters())
    assert [p.requires_grad for p in smolvla.parameters()] == flags


class Zero(torch.nn.Module):
    """A branch physically replaced by nothing: returns zeros shaped like the original output."""

    def __init__(self, original):
        super().__init__()
        self.original = original

    def __getattr__(self, name):  # lerobot reads e.g. o_proj.weight.dtype / mlp.up_proj
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("original"), name)

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(self.original(x, *args, **kwargs))


@pytest.mark.parametrize("kind", POLICIES)
def test_leave_one_out_equals_bypassed_block(kind, request, probe_for):
    policy = request.getfixturevalue(kind)
    probe = probe_for(policy)
    result = METHODS["loo"](probe)
    base = probe.mean_loss()
    assert result.detail["baseline_loss"] == base
    for stack in ("vision", "language", "action"):
        block = policy.get_submodule(probe.layout.stacks[stack].path)[1]
        mods = branch_modules(probe.layout, stack)[1]
        attn_parent, attn_name = _parent(block, mods["attn"])
        orig_attn, orig_mlp = getattr(attn_parent, attn_name), block.mlp
        try:
            setattr(attn_parent, attn_name, Zero(orig_attn))
            block.mlp = Zero(orig_mlp)
            bypassed = probe.mean_loss()
        finally:
            setattr(attn_parent, attn_name, orig_attn)
            block.mlp = orig_mlp
        assert result.blocks[stack][1] == pytest.approx(bypassed - base, abs=1e-6), stack


def _parent(block, module):
    for m in block.modules():
        for child_name, child in m.named_children():
            if child is module:
                return m, child_name
    raise AssertionError("module not in block")


def test_leave_one_out_equals_removed_decoder_layer(llama):
    """On a transformers LM, gating block 2 to 0 gives the loss of the model with layer 2 deleted."""
    import copy

    from vlaprune.adapters import layout
    from vlaprune.scoring import Probe

    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))

    def lm_loss(model):
        return lambda i, batch: model(input_ids=batch, labels=batch).loss

    probe = Probe(layout(llama), ["language"], [ids], lm_loss(llama))
    result = METHODS["loo"](probe)
    cut = copy.deepcopy(llama)
    cut.model.layers = torch.nn.ModuleList(b for i, b in enumerate(cut.model.layers) if i != 2)
    cut.config.num_hidden_layers = 3
    for i, layer in enumerate(cut.model.layers):
        layer.self_attn.layer_idx = i
    with torch.no_grad():
        removed = float(lm_loss(cut)(0, ids))
    assert result.blocks["language"][2] == pytest.approx(removed - result.detail["baseline_loss"], abs=1e-6)


@pytest.mark.parametrize(
    "method", ["gateprobe", "gateprobe_branch", "loo", "block_influence", "angular", "random", "greedy"]
)
def test_same_seed_same_scores(method, smolvla, probe_for):
    a = METHODS[method](probe_for(smolvla, seed=3)).blocks
    b = METHODS[method](probe_for(smolvla, seed=3)).blocks  # batches drawn again from the dataset
    assert a == b
    assert set(a) == {"vision", "language", "action"}
    assert [len(v) for v in a.values()] == [2, 4, 4]


def test_other_seed_other_batches(smolvla, probe_for):
    a = METHODS["gateprobe"](probe_for(smolvla, seed=0)).blocks
    b = METHODS["gateprobe"](probe_for(smolvla, seed=1)).blocks
    assert a != b


def test_greedy_orders_every_block_once(pi0, probe_for):
    result = METHODS["greedy"](probe_for(pi0, batches=1))
    ranks = sorted(v for vals in result.blocks.values() for v in vals)
    assert ranks == [float(i) for i in range(10)]
    losses = result.detail["loss_after_each"]
    assert len(losses) == 10


def test_static_baselines(smolvla, probe_for):
    probe = probe_for(smolvla, batches=1)
    assert METHODS["position_last"](probe).blocks["language"] == [4.0, 3.0, 2.0, 1.0]
    assert METHODS["position_first"](probe).blocks["action"] == [1.0, 2.0, 3.0, 4.0]
    mag = METHODS["magnitude"](probe).blocks["language"]
    block0 = probe.layout.stacks["language"].blocks[0]
    expected = torch.cat([p.abs().flatten() for p in block0.parameters() if p.dim() >= 2]).mean()
    assert mag[0] == pytest.approx(float(expected))
