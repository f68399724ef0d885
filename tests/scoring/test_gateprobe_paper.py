"""The paper's GateProbe (`gateprobe`): per-example dL_x/da of the whole-update gate, then mean |.|.

Per-example loss. lerobot's SmolVLA / pi0 / pi0.5 `forward(batch, reduction="none")` returns each example's
own loss, shape (B,), with the same masking as the batch loss; with the RNG seeded to `noise_seed(seed, i)`,
as `vlaprune.data.policy_loss` does, the flow-matching noise and time are the ones the probe saw. For the
transformers LM the per-example loss is computed here from the logits: token cross-entropy over the example's
own non-ignored labels, which is how transformers' causal-LM loss averages (over the batch's tokens).

Finite differences. The derivative in the gate of block i (all examples' gates moved together, so any
cross-example interaction would show) is the fourth-order central difference (4 D(h) - D(2h)) / 3,
D(h) = (L_x(1 + h) - L_x(1 - h)) / 2h, with h = 1/16 (exact in binary). A float64 copy is no cleaner:
lerobot and transformers cast to float32 inside (RMSNorm variance, softmax, time sampling, the action head),
so the loss carries float32 rounding (~1e-7) whatever the weights; a small h would amplify it, and the
stencil removes the h^2 error of a large one. Agreement: max_x |grad - fd| <= 1e-3 * max_x |fd| per block.
"""

import pytest
import torch

from vlaprune.data import noise_seed
from vlaprune.errors import VlapruneError
from vlaprune.scoring import METHODS, Probe
from vlaprune.scoring.gateprobe import example_gradients, example_weights
from vlaprune.scoring.gates import update_gates

H = 1 / 16
RTOL = 1e-3


def stencil(loss_at) -> torch.Tensor:
    """d/da of loss_at(a) (B,) at a = 1, fourth-order central difference."""

    def d(h):
        return (loss_at(1 + h) - loss_at(1 - h)) / (2 * h)

    return (4 * d(H) - d(2 * H)) / 3


def check_blocks(probe, per_example_loss) -> int:
    """Compare every block's dL_x/da from `example_gradients` (one batch) with the stencil; returns the number
    of blocks whose gradient is clearly non-zero."""
    (batch,) = probe.batches
    grads = example_gradients(probe)
    n = len(example_weights(probe, batch))
    live = 0
    for key, g in grads.items():

        def loss_at(a, key=key):
            with update_gates(probe.layout, probe.stacks, n) as gates:
                gates.set(key, a)
                with torch.no_grad():
                    return per_example_loss(batch).double()

        fd = stencil(loss_at)
        scale = float(fd.abs().max())
        assert float((g - fd).abs().max()) <= RTOL * scale + 1e-9, (key, g.tolist(), fd.tolist())
        live += scale > 1e-3
    return live


def lerobot_per_example(policy, seed: int, i: int = 0):
    def loss(batch):
        policy.eval()
        with torch.random.fork_rng():
            torch.manual_seed(noise_seed(seed, i))
            return policy.forward(dict(batch), reduction="none")[0]

    return loss


def with_padding(probe):
    """The probe's batch with action padding that differs per example: 4 valid steps, none (all padded),
    the recorded ones, all valid. SmolVLA masks padded steps per example; pi0 / pi0.5 do not."""
    batch = dict(probe.batches[0])
    pad = batch["action_is_pad"].clone()
    pad[0], pad[1], pad[3] = torch.arange(pad.shape[1]) >= 4, True, False
    batch["action_is_pad"] = pad
    probe.batches = [batch]
    return probe


@pytest.mark.parametrize("kind", ["smolvla", "pi05"])
def test_per_example_gradient_matches_finite_differences(kind, request, probe_for):
    policy = request.getfixturevalue(kind)
    probe = with_padding(probe_for(policy, batches=1))
    w = example_weights(probe, probe.batches[0])
    assert float(w.sum()) == pytest.approx(1.0)
    if kind == "smolvla":  # weights follow the valid steps: the conversion is really exercised
        valid = (~probe.batches[0]["action_is_pad"]).sum(1).double()
        assert torch.equal(w, valid / valid.sum()) and w[1] == 0 and len(set(w.tolist())) > 2
    else:
        assert torch.equal(w, torch.full((4,), 0.25, dtype=torch.float64))
    live = check_blocks(probe, lerobot_per_example(policy, probe.seed))
    assert live >= 6  # most of the 10 blocks (the last language block is exactly 0: nothing reads it)


def lm_batch():
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 10:], labels[2, :12] = -100, -100  # uneven token counts: 9, 15, 3, 15 predicted tokens
    return {"input_ids": ids, "labels": labels}


def lm_tokens(batch) -> torch.Tensor:
    return (batch["labels"][:, 1:] != -100).sum(1)


def lm_per_example(model):
    def loss(batch):
        logits = model(input_ids=batch["input_ids"]).logits.float()[:, :-1]  # (B, T-1, V)
        ce = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none"
        )  # (B, T-1), 0 where ignored
        return ce.sum(1) / lm_tokens(batch)

    return loss


def lm_probe(model, batch, loss=None, weights=None):
    from vlaprune.adapters import layout

    def hf_loss(i, b):
        return model(input_ids=b["input_ids"], labels=b["labels"]).loss  # mean over the batch's tokens

    def token_share(b):
        return lm_tokens(b) / lm_tokens(b).sum()

    return Probe(
        layout(model), ["language"], [batch], loss or hf_loss, example_weights=weights or token_share
    )


def test_per_example_gradient_matches_finite_differences_transformers(llama):
    probe = lm_probe(llama, lm_batch())
    assert check_blocks(probe, lm_per_example(llama)) == 4


def test_absolute_values_do_not_cancel(llama):
    """Two copies of one example whose losses are +CE and -CE: their gate gradients are opposite. The paper's
    GateProbe averages |dL_x/da| and scores every block > 0; any signed sum over examples (the branch gate's
    -dL/dg, or the mean of dL_x/da) is ~0, and so is |dL/dg| taken after the sum."""
    row = lm_batch()
    batch = {k: v[:1].repeat(2, 1) for k, v in row.items()}
    sign = torch.tensor([1.0, -1.0])

    def signed_loss(i, b):
        return (sign * lm_per_example(llama)(b)).mean()

    probe = lm_probe(llama, batch, signed_loss, lambda b: torch.full((2,), 0.5))
    paper = METHODS["gateprobe"](probe)
    grads = example_gradients(probe)
    for i, score in enumerate(paper.blocks["language"]):
        g = grads[("language", i)]
        assert score > 1e-3 and score == pytest.approx(float(g.abs().mean()))
        assert float(g[0]) == pytest.approx(-float(g[1]), rel=1e-5)
        assert abs(paper.detail["mean_dL_da"][f"language/{i}"]) < 1e-5 * score
    for method in ("gateprobe_branch", "gateprobe_branch_abs"):
        assert all(
            abs(v) < 1e-5 * min(paper.blocks["language"]) for v in METHODS[method](probe).blocks["language"]
        )


def test_mean_over_all_examples_of_all_batches(pi0, probe_for):
    probe = probe_for(pi0, batches=2)
    grads = example_gradients(probe)
    assert {len(g) for g in grads.values()} == {8}  # 2 batches x 4 frames
    scores = METHODS["gateprobe"](probe)
    assert scores.detail["examples"] == 8
    for (s, i), g in grads.items():
        assert scores.blocks[s][i] == pytest.approx(float(g.abs().mean())) and scores.blocks[s][i] >= 0
    assert scores.blocks["language"][-1] == 0.0  # the expert reads only its K/V, never its residual update


def test_refuses_sublayer_granularity(smolvla, probe_for):
    with pytest.raises(VlapruneError, match="gates whole blocks"):
        METHODS["gateprobe"](probe_for(smolvla, batches=1, granularity="sublayer"))
    assert METHODS["gateprobe_branch"](probe_for(smolvla, batches=1, granularity="sublayer")).blocks


def test_unknown_loss_weights_refused(llama):
    probe = lm_probe(llama, lm_batch())
    probe.example_weights = None
    with pytest.raises(VlapruneError, match="per-example loss weights"):
        METHODS["gateprobe"](probe)
