"""Full-size SmolVLA (SmolVLM2-500M) and pi0 / pi0.5 (~3.3 B) with random weights, on the CPU: marked
`slow` (minutes and several GB each; not in the default run):

    .venv/bin/python -m pytest -m slow tests/test_fullscale.py

SmolVLA goes the whole way a user goes: inspect -> gateprobe -> drop -> save -> strict reload -> one
recovery step. pi0 / pi0.5: GateProbe over every stack finishes with finite scores.
"""

import pytest
import torch

from vlaprune.adapters import layout
from vlaprune.adapters.lerobot.batch import training_pass
from vlaprune.data import policy_loss
from vlaprune.policy import load_policy, wrap
from vlaprune.scoring import Probe
from vlaprune.scoring.gateprobe import gateprobe
from vlaprune.tiny.full_size import calibration_batches

pytestmark = pytest.mark.slow


def test_full_smolvla_inspect_gateprobe_drop_save_reload_recover(tmp_path):
    from vlaprune.tiny.full_size import full_smolvla

    policy = full_smolvla()  # fp32, as lerobot loads it (~1.8 GB)
    lay = layout(policy)
    assert {s: len(st) for s, st in lay.stacks.items()} == {"vision": 12, "language": 16, "action": 16}
    assert 400e6 < sum(p.numel() for p in policy.parameters()) < 550e6
    scores = gateprobe(
        Probe(lay, list(lay.stacks), calibration_batches(policy), policy_loss(policy, 0))
    ).blocks
    assert all(len(scores[s]) == len(lay.stacks[s]) for s in lay.stacks)
    assert all(v == v for vals in scores.values() for v in vals) and max(scores["language"]) > 0
    handle = wrap(policy)
    low = sorted(range(16), key=lambda i: scores["language"][i])[:8]
    plan = handle.drop_blocks({"language": low})  # keep-K/V: the expert keeps its 16 blocks
    assert plan.params_after < plan.params_before
    out = handle.save(tmp_path / "cut")
    back = load_policy(out)
    batch = calibration_batches(policy)[0]
    with torch.no_grad():
        torch.testing.assert_close(
            policy_loss(back.module, 0)(0, batch), policy_loss(handle.module, 0)(0, batch)
        )
    module = back.module.train()
    module.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    loss = training_pass(module, 1)()[0]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_full_pi_gateprobe_finishes(kind):
    from vlaprune.tiny.full_size import full_pi

    policy = full_pi(kind, torch.float32)  # fp32 (~17 GB peak): this CPU has no fast bf16 matmul
    lay = layout(policy)
    assert {s: len(st) for s, st in lay.stacks.items()} == {"vision": 27, "language": 18, "action": 18}
    scores = gateprobe(
        Probe(lay, list(lay.stacks), calibration_batches(policy), policy_loss(policy, 0))
    ).blocks
    assert all(v == v and abs(v) < float("inf") for vals in scores.values() for v in vals)
