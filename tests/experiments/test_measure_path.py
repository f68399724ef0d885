"""The per-action speed-up of an in-place cut is timed against the unpruned model on the cut's code path."""

import torch

from vlaprune.experiments.measure import _same_path
from vlaprune.policy import wrap
from vlaprune.tiny.smolvla import tiny_smolvla


def _own_forward(loaded):
    return vars(loaded.module.model.vlm_with_expert).get("forward")


def test_the_original_runs_the_joint_forward_of_an_in_place_cut(smolvlm_dir):
    torch.manual_seed(0)
    original = wrap(tiny_smolvla(smolvlm_dir))
    cut = original.copy()
    plan = cut.drop_blocks({"action": [3]}, "auto")  # action-only: the joint forward is installed on the cut
    assert plan.skipped and _own_forward(cut) is not None
    assert _own_forward(original) is None  # lerobot's forward until timed beside the cut
    same = _same_path(original, plan)
    assert getattr(_own_forward(same), "__func__", None) is _own_forward(cut).__func__
    pair = original.copy()
    assert _own_forward(_same_path(pair, None)) is not None  # (the copy kept the installed forward)
    untouched = wrap(tiny_smolvla(smolvlm_dir))
    pair_plan = untouched.copy().drop_blocks({"language": [3]}, "pair")
    assert not pair_plan.kv_only and not pair_plan.skipped
    assert _own_forward(_same_path(untouched, pair_plan)) is None  # a pair drop runs lerobot's code
