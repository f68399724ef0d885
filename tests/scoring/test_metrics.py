"""The metrics the DTR paper compares GateProbe with (scoring/gradients.py, contiguous_cossim, perplexity):
hand-computable cases on a tiny transformers LM, relations between them, and every one running on a tiny
lerobot policy."""

import json

import pytest
import torch

from tests.scoring.test_gateprobe_paper import lm_batch, lm_probe
from vlaprune.errors import VlapruneError
from vlaprune.scoring import METHODS, Probe
from vlaprune.scoring.gateprobe import example_gradients
from vlaprune.scoring.gates import virtual_gates

NEW = [
    "taylor",
    "taylor_elementwise",
    "fisher",
    "fisher_params",
    "hessian_trace",
    "integrated_gradients",
    "contiguous_cossim",
    "perplexity",
]


@pytest.fixture
def lm_with_dead_block():
    """Tiny Llama whose language block 2 has a zero residual update (o_proj and down_proj weights 0)."""
    from vlaprune.tiny.hf import tiny_decoder_lm

    lm = tiny_decoder_lm("llama")
    with torch.no_grad():
        block = lm.model.layers[2]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    return lm


@pytest.mark.parametrize(
    "method",
    ["taylor", "taylor_elementwise", "fisher", "integrated_gradients", "contiguous_cossim", "perplexity"],
)
def test_a_block_whose_update_is_zero_ranks_last(method, lm_with_dead_block):
    probe = lm_probe(lm_with_dead_block, lm_batch())
    probe.span = 1
    scores = METHODS[method](probe).blocks["language"]
    assert abs(scores[2]) < 1e-6, scores
    assert all(scores[i] > 10 * abs(scores[2]) + 1e-7 for i in (0, 1, 3)), scores


def test_fisher_is_the_mean_square_of_gateprobes_gradients(llama):
    probe = lm_probe(llama, lm_batch())
    grads = example_gradients(probe)
    got = METHODS["fisher"](probe).blocks["language"]
    assert got == pytest.approx([float(grads[("language", i)].pow(2).mean()) for i in range(4)], rel=1e-9)
    gp = METHODS["gateprobe"](probe).blocks["language"]
    assert all(f >= g * g - 1e-12 for f, g in zip(got, gp))  # E[x^2] >= (E|x|)^2


def test_elementwise_taylor_bounds_block_taylor(llama):
    probe = lm_probe(llama, lm_batch())
    block = METHODS["taylor"](probe).blocks["language"]
    elem = METHODS["taylor_elementwise"](probe).blocks["language"]
    assert all(e >= b > 0 for e, b in zip(elem, block))
    assert any(e > 1.5 * b for e, b in zip(elem, block))  # signs cancel in the block sum


def test_integrated_gradients_are_complete(llama):
    """sum_i IG_i = L(stack on) - L(stack off) as the steps grow (midpoint rule)."""
    batch = lm_batch()
    probe = lm_probe(llama, batch)
    on = probe.mean_loss()
    with virtual_gates(probe.layout, ["language"], "block") as gates:
        for i in range(4):
            gates.set(("language", i), 0.0)
        off = probe.mean_loss()
    errors = []
    for steps in (2, 16):
        probe.ig_steps = steps
        signed = METHODS["integrated_gradients"](probe).detail["signed_ig"]["language"]
        errors.append(abs(sum(signed) - (on - off)))
    assert errors[1] < 0.02 * abs(on - off) and errors[1] < errors[0]


def test_hutchinson_matches_the_exact_trace(llama):
    """A loss quadratic in the block parameters with a known Hessian: 0.5 * sum_j d_j theta_j^2 plus
    (u . theta)^2 per block, so tr(H_block) = sum_j d_j + 2 |u|^2 (the cross term exercises the estimator)."""
    from vlaprune.adapters import layout

    lay = layout(llama)
    blocks = [list(b.parameters()) for b in lay.stacks["language"].blocks]
    gen = torch.Generator().manual_seed(1)
    d = [[torch.rand(p.shape, generator=gen) for p in ps] for ps in blocks]
    u = [[0.05 * torch.randn(p.shape, generator=gen) for p in ps] for ps in blocks]

    def loss(i, batch):
        total = 0.0
        for ps, ds, us in zip(blocks, d, u):
            total = total + sum(0.5 * (dj * p * p).sum() for p, dj in zip(ps, ds))
            total = total + sum((uj * p).sum() for p, uj in zip(ps, us)) ** 2
        return total

    exact = [float(sum(x.sum() for x in ds) + 2 * sum(x.pow(2).sum() for x in us)) for ds, us in zip(d, u)]
    probe = Probe(lay, ["language"], [{}], loss, seed=0, probes=64)
    got = METHODS["hessian_trace"](probe).blocks["language"]
    assert got == pytest.approx(exact, rel=0.02)


@pytest.mark.parametrize("kind", ["smolvla", "pi05"])
def test_every_new_method_runs_on_a_tiny_policy(kind, request, probe_for):
    policy = request.getfixturevalue(kind)
    probe = probe_for(policy, batches=1)
    probe.probes, probe.ig_steps = 2, 2
    for m in NEW:
        if m == "perplexity":
            probe.stacks = ["language"]
        sc = METHODS[m](probe)
        assert set(sc.blocks) == set(probe.stacks), m
        vals = [v for s in sc.blocks.values() for v in s]
        assert vals and all(v == v and abs(v) < float("inf") for v in vals), (m, vals)
        assert any(v != 0 for v in vals), m


def test_perplexity_refuses_stacks_and_models_without_a_head(pi0):
    from vlaprune.adapters import layout
    from vlaprune.scoring.perplexity import check
    from vlaprune.tiny.hf import tiny_siglip

    lay = layout(tiny_siglip())  # a vision-language encoder: no language-model head
    with pytest.raises(VlapruneError, match="needs a language-model head"):
        check(lay, [s for s, st in lay.stacks.items() if st.component == "language"])
    with pytest.raises(VlapruneError, match="language blocks only.*vision"):
        check(layout(pi0), ["language", "vision"])
    check(layout(pi0), ["language"])  # PaliGemma keeps its head


def test_score_cli_runs_the_metric_set_and_reports_agreement(tiny_dataset, tmp_path, cli_error):
    from vlaprune.cli import main

    out = tmp_path / "scores.json"
    args = [
        "score",
        "--policy.path=tiny:pi0",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
        "--calibration.batch_size=2",
    ]
    compare = "--compare=taylor,fisher,integrated_gradients,contiguous_cossim"
    assert main([*args, "--method=gateprobe", compare, "--ig_steps=2", f"--output={out}"]) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {
        "gateprobe",
        "taylor",
        "fisher",
        "integrated_gradients",
        "contiguous_cossim",
        "loo",
    }
    for m in ("gateprobe", "taylor", "fisher", "integrated_gradients", "contiguous_cossim"):
        agree = data["agreement_with_loo"][m]
        assert set(agree) == {"vision", "language", "action", "all"}
        assert -1 <= agree["all"]["spearman"] <= 1 and -1 <= agree["all"]["kendall"] <= 1
    for flag, message in [
        ("--probes=0", "--probes=0: must be at least 1"),
        ("--ig_steps=0", "--ig_steps=0: must be at least 1"),
        ("--span=0", "--span=0: must be at least 1"),
        ("--calibration.batches=0", "need at least one calibration batch"),
        ("--method=oracle", "unknown method 'oracle'"),
    ]:
        bad = tmp_path / "bad.json"
        assert message in cli_error([*args, "--method=hessian_trace", flag, f"--output={bad}"], only=False)
        assert not bad.exists()
    bad = tmp_path / "ppl.json"
    msg = cli_error([*args, "--method=perplexity", "--components=vision", f"--output={bad}"], only=False)
    assert "language blocks only" in msg and not bad.exists()
