"""`vlaprune inspect` and `vlaprune demo` end to end, and their one-line errors on bad input."""

import json
import os
import subprocess
import sys

import pytest

from vlaprune.cli import main


def numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def smolvla_ckpt(smolvla, tmp_path_factory):
    d = tmp_path_factory.mktemp("smolvla_ckpt")
    smolvla.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def act_ckpt(tmp_path_factory):
    """A lerobot ACT checkpoint: a real policy no adapter knows."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    cfg = ACTConfig(
        pretrained_backbone_weights=None,
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=2,
        n_decoder_layers=1,
        chunk_size=4,
        n_action_steps=4,
        device="cpu",
        input_features={
            "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
            "observation.state": PolicyFeature(FeatureType.STATE, (4,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
    )
    d = tmp_path_factory.mktemp("act_ckpt")
    ACTPolicy(cfg).save_pretrained(d)
    return d


def test_inspect_lerobot_checkpoint_folder(smolvla, smolvla_ckpt, tmp_path, capsys):
    out = tmp_path / "anatomy.json"
    assert main(["inspect", f"--policy.path={smolvla_ckpt}", f"--output={out}"]) == 0
    anat = json.loads(out.read_text())
    assert anat["family"] == "smolvla" and anat["source"] == str(smolvla_ckpt)
    assert {s["name"]: s["blocks"] for s in anat["stacks"]} == {"vision": 2, "language": 4, "action": 4}
    assert anat["total_params"] == numel(smolvla)
    assert anat["total_flops"] > 0
    printed = capsys.readouterr().out
    assert "language" in printed and "paired with action" in printed and "% FLOPs" in printed


def test_inspect_transformers_checkpoint_folder(tmp_path):
    from vlaprune.tiny.hf import tiny_decoder_lm

    model = tiny_decoder_lm("qwen2", layers=3)
    model.save_pretrained(tmp_path / "qwen")
    out = tmp_path / "a.json"
    assert main(["inspect", f"--policy.path={tmp_path / 'qwen'}", f"--output={out}"]) == 0
    anat = json.loads(out.read_text())
    assert anat["model_class"] == "Qwen2ForCausalLM"
    assert [(s["name"], s["path"], s["blocks"]) for s in anat["stacks"]] == [("language", "model.layers", 3)]
    assert anat["total_params"] == numel(model)


def test_stacks_flag_makes_an_unsupported_policy_inspectable(act_ckpt, tmp_path):
    out = tmp_path / "act.json"
    args = ["inspect", f"--policy.path={act_ckpt}", "--stacks=action=model.encoder.layers", f"--output={out}"]
    assert main(args) == 0
    anat = json.loads(out.read_text())
    assert anat["family"] == "paths" and anat["stacks"][0]["blocks"] == 2 and anat["stacks"][0]["flops"] > 0


def bad_inputs(tmp, act_ckpt):
    (tmp / "empty").mkdir()
    (tmp / "weird").mkdir()
    (tmp / "weird" / "config.json").write_text('{"hello": 1}')
    return [
        ([f"--policy.path={tmp / 'nope'}"], "no such file or folder"),
        ([f"--policy.path={tmp / 'empty'}"], "has no config.json"),
        ([f"--policy.path={tmp / 'weird'}"], "neither a lerobot policy config"),
        ([f"--policy.path={act_ckpt}"], "no adapter knows ACTPolicy"),
        ([f"--policy.path={act_ckpt}", "--stacks=action=model.encoder"], "not a non-empty ModuleList"),
        (["--policy.path=tiny:nothing"], "unknown tiny model"),
        (["--policy.path=no-such-org/no-such-model"], "cannot fetch hub id"),  # HF_HUB_OFFLINE=1 in tests
    ]


def test_bad_input_one_line_error_nothing_written(act_ckpt, tmp_path, cli_error):
    out = tmp_path / "out.json"
    for args, message in bad_inputs(tmp_path, act_ckpt):
        assert message in cli_error(["inspect", *args, f"--output={out}"]), args
        assert not out.exists()


def test_console_script_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exe = os.path.join(os.path.dirname(sys.executable), "vlaprune")
    bad = subprocess.run(
        [exe, "inspect", f"--policy.path={tmp_path}/missing"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip() == f"vlaprune: error: --policy.path '{tmp_path}/missing': no such file or folder "
        "(and not a hub id like org/name)"
    )
    unknown = subprocess.run([exe, "frobnicate"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr


@pytest.mark.parametrize("command", sorted(__import__("vlaprune.cli").cli.COMMANDS))
def test_every_subcommand_prints_its_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()
    if command != "report":  # draccus lists every flag of the command's config
        assert "--policy.path" in out or "--output_dir" in out or "--base" in out, out[:500]
