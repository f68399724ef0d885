"""The DTR paper's head cut: OpenVLA-OFT's action-head MLP-ResNet shrunk in hidden width (4096 -> N)."""

import json

import pytest
import torch

from vlaprune.adapters.openvla.policy import example_batch
from vlaprune.cli import main
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy
from vlaprune.surgery.width import CRITERIA


def test_width_cut_keeps_the_top_channels_everywhere(oft):
    resnet = oft.module.action_head.model
    scores = CRITERIA["magnitude"](resnet, 0)
    fc1, blocks = resnet.fc1.weight.clone(), [b.ffn[1].weight.clone() for b in resnet.mlp_resnet_blocks]
    plan = oft.shrink_width(16)
    kept = torch.tensor(plan.kept)
    assert plan.kept == sorted(torch.topk(scores, 16).indices.tolist()) and plan.width_before == 64
    assert torch.equal(resnet.fc1.weight, fc1[kept])
    for block, w in zip(resnet.mlp_resnet_blocks, blocks, strict=True):
        assert torch.equal(block.ffn[1].weight, w[kept][:, kept]) and block.ffn[0].weight.shape == (16,)
    assert resnet.layer_norm2.weight.shape == (16,) and resnet.fc2.in_features == 16
    assert plan.params_after < plan.params_before
    batch = example_batch(oft.module, batch_size=2)
    loss = oft.module(batch)[0]
    loss.backward()  # the cut head trains
    assert resnet.fc1.weight.grad.shape == (16, resnet.fc1.in_features)


def test_width_cut_saves_and_reloads_strictly(oft, tmp_path):
    oft.drop_blocks({"language": [1]})
    oft.shrink_width(8, "first")
    batch = example_batch(oft.module, batch_size=2)
    expected = oft.module(batch)[0]
    out = oft.save(tmp_path / "cut")
    plan = json.loads((out / "plan.json").read_text())
    assert [p["kind"] for p in plan["plans"]] == ["blocks", "width"] and plan["plans"][1]["kept"] == list(
        range(8)
    )
    # the VLA stays OFT-loadable; OFT's own head (hidden = LLM width) refuses the 8-wide head file
    assert (out / "model.safetensors").is_file() and plan["family_loader_ok"] is False
    again = load_policy(PolicyConfig(path=str(out), trust_remote_code=True))
    assert again.module.action_head.model.fc1.out_features == 8
    assert torch.equal(again.module(batch)[0], expected)


@pytest.mark.parametrize(
    "width, criterion, match", [(64, "magnitude", "between 1 and 63"), (8, "wanda", "unknown")]
)
def test_bad_width_touches_nothing(oft, width, criterion, match):
    with pytest.raises(VlapruneError, match=match):
        oft.shrink_width(width, criterion)
    assert oft.module.action_head.model.fc1.out_features == 64 and not oft.record.plans


def test_drop_head_width_from_the_cli(oft_dir, tmp_path, cli_error):
    out = tmp_path / "head-16"
    flags = [f"--policy.path={oft_dir}", "--policy.trust_remote_code=true", "--latency_calls=1"]
    assert main(["drop", *flags, "--drop.head_width=16", f"--output_dir={out}"]) == 0
    cost = json.loads((out / "cost.json").read_text())
    assert cost["plan"]["kind"] == "width" and len(cost["plan"]["kept"]) == 16
    assert (
        cost["cost_pruned"]["params_by_component"]["action"]
        < cost["cost_original"]["params_by_component"]["action"]
    )
    line = cli_error(["drop", *flags, "--drop.head_width=64", f"--output_dir={tmp_path / 'x'}"], only=False)
    assert "choose 1..63" in line and not (tmp_path / "x").exists()
