"""Dead compute (`surgery.dead`): what nothing reads goes, and the actions stay bit-identical.

The reference is the uncut model on the joint forward every in-place cut installs (same code path, so the
same arithmetic: SmolVLA's denoising steps there run a fused attention that equals lerobot's eager one up to
the last bits, tested in test_keep_kv)."""

import json

import pytest
import torch

from tests.surgery.conftest import actions
from vlaprune.adapters import layout
from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.cli import main
from vlaprune.policy import wrap
from vlaprune.surgery.dead import dead_blocks, dead_request


def same_path(policy):
    """`policy` running the in-place cuts' joint forward, uncut."""
    layout(policy).skip_in_place["action"].install()
    return policy


@pytest.mark.parametrize("kind", ["smolvla", "pi0", "pi05"])
def test_the_last_language_update_is_dead_and_goes_for_free(kind, fresh):
    policy = same_path(fresh(kind))
    want = actions(policy)
    assert dead_blocks(layout(policy)) == {"language": {"update": [3], "whole": []}}
    handle = wrap(policy)
    plan = handle.drop_blocks(dead_request(handle.layout()))
    assert plan.kv_only == {"language": [3]} and plan.params_after < plan.params_before
    assert torch.equal(actions(policy), want)  # bit-identical
    assert dead_request(layout(policy)) == {}


def test_unread_blocks_after_the_last_read_one_are_dead(fresh):
    """SmolVLA with 2 expert blocks on 4 VLM blocks: expert 1 reads VLM block 2, so block 2's update and all
    of block 3 are dead; after an action-only drop of expert 1, the last read block is 0."""
    kw = {"num_expert_layers": 2, "self_attn_every_n_layers": 4}
    policy = same_path(fresh("smolvla", **kw))
    assert dead_blocks(layout(policy)) == {"language": {"update": [2], "whole": [3]}}
    want = actions(policy)
    plan = wrap(policy).drop_blocks(dead_request(layout(policy)))
    assert plan.kv_params["language"][0] > 0 == plan.kv_params["language"][1]  # nothing kept of block 3
    assert torch.equal(actions(policy), want)
    assert [is_kv_only(b) for b in layout(policy).stacks["language"].blocks] == [False, False, True, True]
    other = fresh("smolvla", **kw)
    wrap(other).drop_blocks({"action": [1]})
    assert dead_blocks(layout(other)) == {"language": {"update": [0], "whole": [1, 2, 3]}}


def test_a_plain_language_model_has_none(fresh):
    assert dead_blocks(layout(fresh("llama"))) == {}


def test_inspect_lists_and_drop_removes_the_dead_compute(smolvlm_dir, tmp_path, capsys):
    out = tmp_path / "anatomy.json"
    assert main(["inspect", "--policy.path=tiny:pi0", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "dead compute in language: block 3: only its K/V are read" in printed
    (row,) = json.loads(out.read_text())["dead"]
    assert row["stack"] == "language" and row["params"] > 0 and row["flops_chunk"] > 0
    cut = tmp_path / "cut"
    args = ["drop", "--policy.path=tiny:pi0", "--drop.dead=true", "--latency_calls=1", f"--output_dir={cut}"]
    assert main(args) == 0
    plan = json.loads((cut / "plan.json").read_text())["plans"][0]
    assert plan["kv_only"] == {"language": [3]}
    assert plan["params_before"] - plan["params_after"] == row["params"]


def test_dead_and_a_request_for_the_same_block_are_refused(tmp_path, cli_error):
    cut = tmp_path / "cut"
    args = ["drop", "--policy.path=tiny:pi0", "--drop.dead=true", "--drop.language=3", f"--output_dir={cut}"]
    assert "dead compute that --drop.dead=true already removes" in cli_error(args)
    assert not cut.exists()


def test_oft_vision_blocks_after_the_read_out_are_dead(oft):
    """OpenVLA-OFT: Prismatic reads each vision tower at block depth-2; the last block runs for nothing and
    goes whole, with bit-identical actions."""
    from vlaprune.adapters.openvla.policy import example_batch, predict_actions

    batch = example_batch(oft.module, batch_size=2)
    with torch.no_grad():
        want = predict_actions(oft.module, batch)
    assert dead_blocks(oft.layout()) == {
        "vision.dino": {"update": [], "whole": [3]},
        "vision.siglip": {"update": [], "whole": [3]},
    }
    plan = oft.drop_blocks(dead_request(oft.layout()))
    assert plan.drops["vision.dino"] == [3] and plan.drops["vision.siglip"] == [3]
    with torch.no_grad():
        assert torch.equal(predict_actions(oft.module, batch), want)
    assert dead_request(oft.layout()) == {}
