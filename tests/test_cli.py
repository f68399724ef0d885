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


@pytest.mark.parametrize("command", sorted(__import__("vlaprune.cli").cli.commands()))
def test_every_subcommand_prints_its_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()
    if command != "report":  # draccus lists every flag of the command's config
        assert "--policy.path" in out or "--output_dir" in out or "--base" in out, out[:500]


# --help: every value of a fixed-value flag, one per line, from the registry the stage checks against


def help_of(command, capsys):
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


def listed(text: str) -> set[str]:
    """The first word of every indented line of --help (where value rows start)."""
    return {line.split()[0] for line in text.splitlines() if line.startswith("    ") and line.split()}


def description(text: str, value: str) -> str:
    """The description --help gives `value` in its row: the rest of its line and the lines indented under it
    (a long value's description starts on the next line)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        words = line.split()
        if line.startswith("    ") and words and words[0] == value:
            at = len(line) - len(line.lstrip())
            more = []
            for nxt in lines[i + 1 :]:
                if len(nxt) - len(nxt.lstrip()) <= at:
                    break
                more.append(nxt.strip())
            return " ".join([*words[1:], *more])
    return ""


def test_score_help_lists_every_scoring_method_with_a_description(capsys):
    from vlaprune.scoring import METHODS

    out = help_of("score", capsys).split("--method str", 1)[1]
    assert {m: description(out, m) for m in METHODS if len(description(out, m)) < 10} == {}
    assert "GateProbe" in description(out, "gateprobe") and "leave-one-out" in description(out, "loo")


def test_prune_units_help_lists_every_criterion_with_a_description(capsys):
    from vlaprune.scoring.units import CRITERIA

    out = help_of("prune-units", capsys).split("--criterion str", 1)[1]
    assert {c: description(out, c) for c in CRITERIA if len(description(out, c)) < 10} == {}
    assert "X_j" in description(out, "wanda") and "OpenVLA" in description(out, "dw_openvla")


@pytest.mark.parametrize(
    "command", ["score", "drop", "recover", "eval", "diverge", "prune-units", "dtr", "demo"]
)
def test_every_fixed_value_flag_lists_its_values(command, capsys):
    from vlaprune.cli import commands

    out = help_of(command, capsys)
    values = commands()[command].values
    assert values or command == "inspect"
    for flag, registry in values.items():
        block = out.split(f"  {flag} ", 1)[1]  # from the flag's own entry on
        assert set(registry) <= listed(block), (flag, set(registry) - listed(block))


def test_help_is_the_stage_docstring(capsys):
    import vlaprune.experiments.dtr as dtr

    out = help_of("dtr", capsys)
    assert out.startswith("usage: vlaprune dtr") and dtr.__doc__.split("\n")[0] in out
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "the Drop-Then-Recovery protocol as a resumable sweep" in top and "--verbose" in top


# quiet by default: third-party chatter only with --verbose; an error is one line


def test_third_party_output_only_with_verbose(tiny_dataset, tmp_path, capsys):
    args = [
        "score",
        "--policy.path=tiny:smolvla",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
    ]
    args += ["--calibration.batch_size=2", "--method=magnitude", f"--output={tmp_path / 's.json'}"]
    outputs = {}
    for flags in ([], ["--verbose"]):
        capsys.readouterr()
        assert main([*flags, *args]) == 0
        outputs[bool(flags)] = capsys.readouterr()
    quiet, loud = outputs[False], outputs[True]
    assert "Reducing the number of VLM layers" not in quiet.out + quiet.err
    assert "Reducing the number of VLM layers" in loud.out
    assert "magnitude: blocks ranked per stack" in quiet.out and "wrote" in quiet.out  # vlaprune's own output


def test_quiet_silences_datasets_map_bars_and_restores_them(tmp_path, capsys):
    """No vlaprune command writes a LeRobotDataset, which is where datasets' "Map:" bars come from (lerobot
    embeds the images): check the switch on the tiny dataset writer, inside and outside `quiet`."""
    from vlaprune.quiet import quiet
    from vlaprune.tiny.dataset import write_tiny_dataset

    capsys.readouterr()
    with quiet():
        write_tiny_dataset(tmp_path / "a")
        print("Reducing the number of VLM layers to 4 ...")
        print("vlaprune's own line")
    inside = capsys.readouterr()
    write_tiny_dataset(tmp_path / "b")
    outside = capsys.readouterr()
    assert "Map:" not in inside.err and "Reducing" not in inside.out and "vlaprune's own line" in inside.out
    assert "Map:" in outside.err


def test_an_error_after_loading_is_one_line(tiny_dataset, tmp_path, cli_error):
    args = [
        "prune-units",
        "--policy.path=tiny:smolvla",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
    ]
    err = cli_error(
        [*args, "--calibration.batch_size=2", "--ratios=vision.attn=0.1", f"--output_dir={tmp_path}/o"]
    )
    assert "removes no query heads" in err


@pytest.mark.parametrize(
    "command", sorted(n for n, c in __import__("vlaprune.cli").cli.commands().items() if c.config is not None)
)
def test_every_flag_has_a_help_text(command):
    """draccus gives a field the comment right above it only: a field without its own comment has an empty
    --help line."""
    from vlaprune import cli

    cmd = cli.commands()[command]
    parser = cli.parser(command, cmd)
    actions = parser.parser._actions
    flags = [a for a in actions if a.option_strings and a.option_strings[0].startswith("--")]
    assert len(flags) > 3
    assert [a.option_strings[0] for a in flags if not (a.help or "").strip()] == []
    listed = [a.option_strings[0] for g in parser.parser._action_groups for a in g._group_actions]
    assert len(listed) == len(set(listed))  # each flag once (draccus adds a group's config-file flag twice)
