"""Unit pruning: ratio 0 is a no-op; pruned policies run, save and load; GQA stays valid; criteria work."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.surgery.conftest import IDS, actions, logits, loss
from vlaprune.adapters import layout
from vlaprune.cli import main
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy, wrap
from vlaprune.scoring import Probe
from vlaprune.scoring.units import unit_scores
from vlaprune.surgery.ratios import parse_ratios, select
from vlaprune.surgery.units import prune_units


def load(folder):
    return load_policy(folder).module


def scores_for(model, kinds, criterion="magnitude"):
    lay = layout(model)
    probe = Probe(lay, sorted(kinds), [], None)
    return unit_scores(probe, criterion, kinds)


@pytest.mark.parametrize("kind", ["smolvla", "pi0"])
def test_ratio_zero_changes_nothing(kind, fresh):
    policy = fresh(kind)
    a, lo = actions(policy), loss(policy)
    units = select(scores_for(policy, {"language": {"ffn"}}), {("language", "mlp"): 0.0})
    assert units == {}
    plan = prune_units(policy, units)
    assert plan.params_after == plan.params_before
    assert torch.equal(actions(policy), a) and torch.equal(loss(policy), lo)


@pytest.mark.parametrize(
    "kind, ratios",
    [
        (
            "smolvla",
            {
                ("language", "mlp"): 0.5,
                ("action", "mlp"): 0.25,
                ("vision", "attn"): 0.5,
                ("vision", "mlp"): 0.5,
            },
        ),
        ("pi0", {("language", "mlp"): 0.5, ("action", "mlp"): 0.5, ("vision", "attn"): 0.5}),
        ("pi05", {("action", "mlp"): 0.3}),
    ],
)
def test_pruned_policy_runs_and_round_trips(kind, ratios, fresh, tmp_path):
    handle = wrap(fresh(kind))
    policy = handle.module
    kinds = {}
    for s, k in ratios:
        kinds.setdefault(s, set()).update({"ffn"} if k == "mlp" else {"q", "kv"})
    plan = handle.prune_units(select(scores_for(policy, kinds), ratios))
    assert plan.params_after < plan.params_before
    mlp = layout(policy).stacks[next(iter(kinds))].blocks[0].mlp
    assert mlp is not None
    lo = loss(policy)
    lo.backward()
    a = actions(policy)
    assert torch.isfinite(lo) and torch.isfinite(a).all()
    from vlaprune.adapters.lerobot.batch import example_batch

    policy.reset()
    assert policy.select_action(example_batch(policy, 1)).shape == (1, 4)
    out = handle.save(tmp_path / "ckpt")
    rec = json.loads((out / "plan.json").read_text())
    assert rec["weights"] == "model.safetensors" and rec["lerobot_type"] == f"vlaprune_{kind}"  # the plugin
    loaded = load(out)
    assert torch.equal(actions(loaded), a)
    assert sum(p.numel() for p in loaded.parameters()) == plan.params_after


@pytest.mark.parametrize("heads, q, kv, groups", [("groups", 2, 1, 2), ("query", 2, 2, 1)])
def test_gqa_head_pruning_keeps_shapes_valid(heads, q, kv, groups, fresh, tmp_path):
    handle = wrap(fresh("llama"))  # 4 query heads, 2 KV heads (groups of 2)
    lm = handle.module
    units = select(scores_for(lm, {"language": {"q", "kv"}}), {("language", "attn"): 0.5}, heads)
    handle.prune_units(units)
    attn = lm.model.layers[0].self_attn
    d = attn.head_dim
    assert attn.q_proj.out_features == q * d and attn.k_proj.out_features == kv * d
    assert attn.o_proj.in_features == q * d and attn.num_key_value_groups == groups
    for spec in units["language"].values():  # kept query heads belong to kept KV heads, uniformly
        assert len(spec["q"]) == q and len(spec["kv"]) == kv
    out = lm.generate(IDS, max_new_tokens=3, do_sample=False)  # KV cache with fewer heads
    assert out.shape == (1, IDS.shape[1] + 3)
    expected = logits(lm)
    assert torch.equal(logits(load(handle.save(tmp_path / "lm"))), expected)


def test_bad_plans(fresh):
    policy = fresh("smolvla")
    stacks = layout(policy).stacks
    with pytest.raises(VlapruneError, match=r"must be in \[0, 1\)"):
        parse_ratios("language.mlp=1.0", stacks)
    with pytest.raises(VlapruneError, match=r"must be in \[0, 1\)"):
        parse_ratios("language.mlp=-0.1", stacks)
    with pytest.raises(VlapruneError, match="not STACK.mlp=R"):
        parse_ratios("language=0.3", stacks)
    with pytest.raises(VlapruneError, match="removes all 2 vision block 0 KV groups"):
        select(scores_for(policy, {"vision": {"q", "kv"}}), {("vision", "attn"): 0.9})
    sc = scores_for(policy, {"language": {"q", "kv"}})
    with pytest.raises(VlapruneError, match="cannot be removed: its attention is joint"):
        prune_units(policy, select(sc, {("language", "attn"): 0.5}))


def test_dw_criteria_find_the_moved_channels(fresh):
    policy = fresh("smolvla")
    lay = layout(policy)
    base = {n: p.detach().clone() for n, p in policy.named_parameters()}
    up = policy.model.vlm_with_expert.vlm.model.text_model.layers[0].mlp.up_proj
    with torch.no_grad():
        up.weight[5] += 1.0  # adaptation moved channel 5 of block 0 the most
    probe = Probe(lay, ["language"], [], None)
    kinds = {"language": {"ffn"}}
    high = unit_scores(probe, "dw_prune_high", kinds, dw_lookup=base.get)["language"][0]["ffn"]
    low = unit_scores(probe, "dw_prune_low", kinds, dw_lookup=base.get)["language"][0]["ffn"]
    assert int(torch.argmin(high)) == 5 and int(torch.argmax(low)) == 5
    keep_high = select({"language": [{"ffn": high}]}, {("language", "mlp"): 0.25})["language"]["0"]["ffn"]
    keep_low = select({"language": [{"ffn": low}]}, {("language", "mlp"): 0.25})["language"]["0"]["ffn"]
    assert 5 not in keep_high and 5 in keep_low


def test_prune_units_cli(smolvla, tiny_dataset, tmp_path, cli_error):
    smolvla.save_pretrained(tmp_path / "vla")
    base = {k: v.detach().clone() for k, v in smolvla.state_dict().items()}
    save_file(base, tmp_path / "vla_copy.safetensors")
    out = tmp_path / "pruned"
    args = [
        "prune-units",
        f"--policy.path={tmp_path / 'vla'}",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
        "--calibration.batch_size=4",
        "--ratios=language.mlp=0.25,vision.attn=0.5",
        "--criterion=dw_prune_high",
        f"--base={tmp_path / 'vla_copy.safetensors'}",
        "--map=identity",
        "--compare=magnitude,wanda,taylor,random",
        "--env.type=metaworld",
        "--env.task=reach-v3",
        "--env.max_steps=3",
        "--eval.n_episodes=2",
        f"--output_dir={out}",
    ]
    assert main(args) == 0
    report = json.loads((out / "prune.json").read_text())
    # judged on the held-out episode (task A's last), scored on the others; every model ran 2 episodes
    assert report["judged_on"]["held_out"] and report["judged_on"]["episodes"] == [2]
    for r in [report["original"], *report["rows"]]:
        assert r["success_tasks"]["reach-v3"]["episodes"] == 2
        lo, hi = r["success_ci95"]
        assert 0 <= lo <= r["success"] <= hi <= 1 and r["latency_ms"] > 0 and r["l1"] > 0
    assert {r["loss_before"] for r in report["rows"]} == {report["original"]["loss"]}
    assert len({r["loss"] for r in report["rows"]}) > 1  # the criteria prune different units
    assert [r["criterion"] for r in report["rows"]] == [
        "dw_prune_high",
        "magnitude",
        "wanda",
        "taylor",
        "random",
    ]
    assert len({round(r["params_removed_pct"], 6) for r in report["rows"]}) == 1  # same ratios for all
    assert report["cost_pruned"]["params"] < report["cost_original"]["params"]
    assert load(out) is not None
    # language block 3's MLP is dead compute (only its K/V are read): no criterion ranks it as free
    units = json.loads((out / "plan.json").read_text())["plans"][-1]["units"]["language"]
    assert "3" not in units and set(units) == {"0", "1", "2"}
    from vlaprune.evaluate.paired import LOSES, UNDECIDED

    for r in report["rows"]:  # each pruned model against the original on the same episodes
        p = r["success_paired"]
        assert p["n"] == 2 and p["verdict"] in (LOSES, UNDECIDED, "keeps success within 5 points")
        assert p["ci_low"] <= p["difference"] <= p["ci_high"]
    from vlaprune.tiny.dataset import write_tiny_dataset

    six = write_tiny_dataset(tmp_path / "six", episodes=6, frames=8)  # per task: train, validation, test
    budget = tmp_path / "budget"
    assert (
        main(
            [
                "prune-units",
                f"--policy.path={tmp_path / 'vla'}",
                f"--dataset.root={six}",
                "--holdout=0.34",
                "--validation=0.34",
                "--calibration.batches=1",
                "--calibration.batch_size=4",
                "--budget=0.1",
                "--criterion=magnitude",
                f"--output_dir={budget}",
            ]
        )
        == 0
    )
    report = json.loads((budget / "prune.json").read_text())
    row = report["rows"][0]
    assert row["params_removed_pct"] >= 10
    splits = report["judged_on"]["splits"]  # the search selected on validation, the numbers are on test
    assert splits == {"train": [0, 1], "validation": [2, 3], "test": [4, 5]}
    assert report["judged_on"]["budget_search_on"] == "validation"
    for bad, msg in [
        (["--ratios=language.mlp=1.5"], "[0, 1)"),
        (["--ratios=language.mlp=0.3", "--budget=0.2"], "exactly one"),
        (["--ratios=language.mlp=0.3", "--criterion=best"], "unknown criterion"),
        (["--ratios=language.mlp=0.3", "--holdout=1"], "--holdout=1"),
        (["--ratios=language.mlp=0.3", "--env.type=metaworld"], "--env.task is required"),
        (["--ratios=language.mlp=0.3", "--env.type=metaworld", "--env.task=fly-v3"], "MetaWorld task"),
    ]:
        argv = [f"--policy.path={tmp_path / 'vla'}", f"--dataset.root={tiny_dataset}", *bad]
        assert msg in cli_error(["prune-units", *argv, f"--output_dir={tmp_path / 'x'}"], only=False), bad
    assert not (tmp_path / "x").exists()


def test_prune_units_spec_cli(smolvla, tiny_dataset, tmp_path, cli_error):
    """A multi-module spec with per-module criteria, directions, scopes and protected blocks, compared with
    baselines on the same modules; masked removal with FLAP's bias compensation; bad specs."""
    smolvla.save_pretrained(tmp_path / "vla")
    save_file({k: v.detach().clone() for k, v in smolvla.state_dict().items()}, tmp_path / "vlm.safetensors")
    common = [
        f"--policy.path={tmp_path / 'vla'}",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
    ]
    spec = (
        "language.mlp=dw_openvla:high:0.25:global:protect=0 vision.mlp=dw_pi05:low:0.25 action.mlp=flap:0.25"
    )
    out = tmp_path / "spec"
    argv = [*common, f"--spec={spec}", f"--base={tmp_path / 'vlm.safetensors'}", "--map=identity"]
    assert main(["prune-units", *argv, "--compare=magnitude,flap", "--removal=masked", "--flap_bias=true",
                 f"--output_dir={out}"]) == 0  # fmt: skip
    report = json.loads((out / "prune.json").read_text())
    rows = {r["criterion"]: r for r in report["rows"]}
    assert list(rows) == ["spec", "magnitude", "flap"]
    assert rows["spec"]["spec"][0] == "language.mlp=dw_openvla:high:0.25:global:protect=0"
    assert rows["magnitude"]["spec"][1] == "vision.mlp=magnitude:low:0.25:layer"
    for r in rows.values():  # masked: nothing saved (FLAP's biases even add a few parameters)
        assert r["removal"] == "masked" and -0.5 < r["params_removed_pct"] <= 0
    assert rows["magnitude"]["params_removed_pct"] == 0  # no flap module, no bias
    assert len({tuple(r["units_removed"].items()) for r in rows.values()}) == 1
    plan = json.loads((out / "plan.json").read_text())["plans"][-1]
    assert plan["removal"] == "masked" and plan["spec"] == rows["spec"]["spec"]
    assert report["removal"] == "masked" and "no saving" in report["removal_note"]
    assert report["cost_pruned"]["flops_forward"] == report["cost_original"]["flops_forward"]
    assert "0" not in plan["units"]["language"]  # protected
    pruned = load(out)
    down = layout(pruned).stacks["action"].blocks[0].mlp.down_proj
    assert down.bias is not None and down.bias.abs().sum() > 0  # FLAP's compensation on the flap module
    assert (down.weight.abs().sum(0) == 0).sum() == round(0.25 * down.in_features)
    # masked: the fraction of each module's units and of the parameters that were zeroed (the real count)
    lay, n_params = layout(pruned), sum(p.numel() for p in pruned.parameters())
    for r in rows.values():
        for mod, a in r["modules"].items():
            stack = mod.split(".")[0]
            outs = [getattr(b.mlp, "down_proj", None) or b.mlp.fc2 for b in lay.stacks[stack].blocks]
            total = sum(o.in_features for o in outs)  # FFN channels: the output projection's inputs
            assert r["units_zeroed_pct"][mod] == pytest.approx(100 * a["removed"] / total)
            assert 0 < r["units_zeroed_pct"][mod] < 100
        assert 0 < r["params_zeroed"] < n_params and r["params_zeroed_pct"] > 0
    assert rows["spec"]["params_zeroed"] <= sum(int((p == 0).sum()) for p in pruned.parameters())  # saved arm
    for bad, msg in [
        (f"--spec={spec}", "need the base VLM's weights"),
        ("--spec=language.mlp=dw:0.2:protect=9", "out of range"),
        ("--spec=language.mlp=magnitude:0.2:sideways", "unknown field 'sideways'"),
        ("--spec=robot.mlp=magnitude:0.2", "no stack 'robot'"),
        ("--spec=language.mlp=magnitude:0.9999", "removes all"),
        ("--removal=zeroed", "--removal='zeroed'"),
    ]:
        extra = [] if bad.startswith("--spec") else ["--spec=language.mlp=magnitude:0.2"]
        base = [f"--base={tmp_path / 'vlm.safetensors'}"] if "protect=9" in bad else []
        argv = ["prune-units", *common, bad, *extra, *base, f"--output_dir={tmp_path / 'x'}"]
        err = cli_error(argv, only=False)
        assert msg in err, (bad, err)
    assert not (tmp_path / "x").exists()
