"""What a new user trips on in the first hour (issue 27): every mistake fails in one line or is reported,
never a silent wrong result."""

import contextlib
import json
import os
import stat

import pytest

from vlaprune.cli import main


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


# 1. --policy.path is required; tiny models only by name, and their outputs say "random weights"


def test_a_command_without_policy_path_refuses_in_one_line(tmp_path, cli_error):
    err = cli_error(["drop", "--drop.language=1", f"--output_dir={tmp_path / 'out'}"])
    assert "--policy.path is required" in err and "tiny:" in err
    assert not (tmp_path / "out").exists()


def test_tiny_model_says_random_weights_in_output_and_files(tmp_path, capsys):
    out = tmp_path / "anatomy.json"
    assert main(["inspect", "--policy.path=tiny:smolvla", "--flops=false", f"--output={out}"]) == 0
    assert "random weights" in capsys.readouterr().out
    assert json.loads(out.read_text())["random_weights"] is True


# 3. files and folders follow the user's umask, atomic writes included


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_follow_the_umask(smolvla, tmp_path, mask, file_mode, dir_mode):
    from vlaprune.atomic import write_json_atomic, write_text_atomic
    from vlaprune.policy import wrap

    with umask(mask):
        assert mode(write_json_atomic(tmp_path / "row.json", {"a": 1})) == file_mode
        assert mode(write_text_atomic(tmp_path / "report.html", "<p>")) == file_mode
        ckpt = wrap(smolvla).save(tmp_path / "ckpt")
    assert mode(ckpt) == dir_mode
    assert mode(ckpt / "model.safetensors") == file_mode and mode(ckpt / "plan.json") == file_mode


# 4. one list syntax


def test_dataset_episodes_takes_the_comma_form_and_says_so_when_wrong(tmp_path, cli_error):
    from vlaprune.cli import _list_flags

    ints = {"--dataset.episodes": int}
    assert _list_flags("--dataset.episodes=0,1,2", ints) == "--dataset.episodes=[0,1,2]"
    assert _list_flags("--dataset.episodes=[0, 1]", ints) == "--dataset.episodes=[0,1]"
    err = cli_error(["score", "--policy.path=tiny:smolvla", "--dataset.episodes=a,b"])
    assert "--dataset.episodes=0,1,2" in err


def test_every_list_flag_takes_the_comma_form_and_draccus_form():
    """List-typed fields are parsed by draccus; the comma form is rewritten to its list, values as typed."""
    from vlaprune.cli import commands, list_flags, parse

    cmds = commands()
    assert {"--sweep.levels", "--sweep.seeds", "--env.task", "--sweep.components"} <= set(
        list_flags(cmds["dtr"].config)
    )
    comma = parse(
        "dtr", cmds["dtr"], ["--sweep.levels=drop_half,0.50", "--sweep.seeds=0,3", "--env.task=a, b"]
    )
    assert comma.sweep.levels == ["drop_half", "0.50"] and comma.sweep.seeds == [0, 3]
    assert comma.env.task == ["a", "b"]
    brackets = parse("dtr", cmds["dtr"], ["--sweep.levels=[drop_half,keep_2]", "--sweep.seeds=[1]"])
    assert brackets.sweep.levels == ["drop_half", "keep_2"] and brackets.sweep.seeds == [1]
    score = parse("score", cmds["score"], ["--compare=magnitude,loo", "--components="])
    assert score.compare == ["magnitude", "loo"] and score.components == []
    drop = parse("drop", cmds["drop"], ["--drop.components=vision,language", "--output_dir=o"])
    assert drop.drop.components == ["vision", "language"]


def test_a_bad_list_value_is_one_line(cli_error):
    assert cli_error(["dtr", "--sweep.seeds=0,x"]) == (
        "vlaprune: error: --sweep.seeds=0,x: give integers comma-separated, e.g. --sweep.seeds=0,1,2"
    )
    assert "unknown method 'nope'" in cli_error(["dtr", "--sweep.methods=gateprobe,nope"])
    assert "unknown part 'ffn'" in cli_error(["dtr", "--sweep.parts=[block,ffn]"])


# 5. a misspelled flag: one line, the nearest valid flag


def test_misspelled_flag_names_the_nearest_one(cli_error):
    err = cli_error(["drop", "--policy.pth=tiny:smolvla", "--drop.language=1"])
    assert err == (
        "vlaprune: error: unknown flag --policy.pth; did you mean --policy.path? (--help lists every flag)"
    )
    assert "did you mean --drop.language?" in cli_error(["drop", "--drop.langauge=1"])


@pytest.mark.parametrize(
    "cmd,old,new",
    [
        ("score", "--batches", "--calibration.batches"),
        ("score", "--batch_size", "--calibration.batch_size"),
        ("prune-units", "--batches", "--calibration.batches"),
        ("dtr", "--calib_batches", "--calibration.batches"),
        ("dtr", "--calib_batch_size", "--calibration.batch_size"),
    ],
)
def test_an_old_calibration_flag_names_the_new_one(cli_error, cmd, old, new):
    """score, prune-units and dtr share one CalibrationConfig: --calibration.batches / .batch_size."""
    assert cli_error([cmd, "--policy.path=tiny:smolvla", f"{old}=2"]) == (
        f"vlaprune: error: unknown flag {old}; did you mean {new}? (--help lists every flag)"
    )


def test_all_block_drop_names_the_stack_asked(cli_error, tmp_path):
    err = cli_error(
        ["drop", "--policy.path=tiny:smolvla", "--drop.action=0,1,2,3", f"--output_dir={tmp_path}/o"]
    )
    assert err.startswith("vlaprune: error: action: the plan drops all 4 blocks")


# 6. progress and closing lines; 7. recover extends a finished run, checkpoints carry processors


def test_score_shows_progress(tiny_dataset, tmp_path, capsys):
    args = [
        "score",
        "--policy.path=tiny:smolvla",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=2",
    ]
    assert main([*args, "--calibration.batch_size=2", "--method=loo", f"--output={tmp_path / 's.json'}"]) == 0
    assert "loo: loss passes over 2 batches" in capsys.readouterr().err


def test_recover_extends_a_finished_run_and_writes_processors(tiny_dataset, tmp_path, capsys, cli_error):
    out = tmp_path / "rec"
    args = ["recover", "--policy.path=tiny:smolvla", f"--dataset.root={tiny_dataset}", "--batch_size=2"]
    assert main([*args, "--steps=2", f"--output_dir={out}"]) == 0
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    assert closing.startswith("recover: 2 steps (2 in this run), final loss ") and closing.endswith(
        f"{out}/final"
    )
    assert (out / "final" / "policy_preprocessor.json").is_file()  # tiny:smolvla has none: from the dataset
    assert "finished at step 2" in cli_error([*args, "--steps=2", "--resume=true", f"--output_dir={out}"])
    assert main([*args, "--steps=3", "--resume=true", f"--output_dir={out}"]) == 0
    summary = json.loads((out / "final" / "recover.json").read_text())
    assert summary["steps"] == 3 and summary["steps_this_run"] == 1
    assert not (out / ".final.old").exists()


# 2, 4, 5, 8: the first steps (docs/first-steps.md), as written, on the shipped demo assets


def first_steps_commands():
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "first-steps.md").read_text()
    block = re.search(r"# First steps\n.*?```bash\n(.*?)```", text, re.S).group(1)
    return [
        shlex.split(line.split("  #")[0])[1:] for line in block.splitlines() if line.startswith("vlaprune ")
    ]


@pytest.fixture(scope="module")
def first_steps(tmp_path_factory):
    """Run docs/first-steps.md's commands in a fresh folder; (folder, {command index: (stdout, stderr)})."""
    import sys
    from io import StringIO

    work = tmp_path_factory.mktemp("first-steps")
    outputs = {}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for i, argv in enumerate(first_steps_commands()):
            out, err = StringIO(), StringIO()
            sys.stdout, sys.stderr = out, err
            try:
                code = main(argv)
            finally:
                sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            assert code == 0, (argv, err.getvalue()[-2000:])
            outputs[i] = (argv, out.getvalue(), err.getvalue())
    finally:
        os.chdir(cwd)
    return work, outputs


def test_first_steps_run_as_written(first_steps):
    work, outputs = first_steps
    commands = [argv[0] for argv, _, _ in outputs.values()]
    assert commands[:3] == ["demo", "inspect", "score"] and commands[-2:] == ["dtr", "report"]
    assert {"drop", "recover", "eval", "prune-units"} <= set(commands)
    assert (work / "dtr-run" / "report.html").is_file() and (work / "units" / "prune.json").is_file()
    # recover -> prune-units -> eval with the default holdout: no "trained on" refusal, and the records agree
    trained = json.loads((work / "units" / "plan.json").read_text())["trained_on"]
    assert trained and all(e not in trained[0]["episodes"] for e in (5, 11, 17, 23))  # each task's last
    dtr_out = next(out for argv, out, _ in outputs.values() if argv[0] == "dtr")
    closing = " ".join(dtr_out.split())
    assert "report: vlaprune report dtr-run" in closing
    assert "selected variant" in closing or "not distinguishable" in closing or "loses success" in closing
    rec_out = next(out for argv, out, _ in outputs.values() if argv[0] == "recover")
    assert "final loss" in rec_out and "rec/final" in rec_out
    plan = json.loads((work / "cut" / "plan.json").read_text())["plans"][0]
    assert plan["asked_vs_removed"]["language"]["asked"] == [1, 3]


def test_a_module_that_loses_no_unit_is_refused_or_reported(first_steps, cli_error, capsys):
    work, _ = first_steps
    common = [
        f"--policy.path={work}/mw4/policy",
        f"--dataset.root={work}/mw4/dataset",
        "--ratios=language.mlp=0.3,vision.attn=0.1",
        "--calibration.batches=1",
        "--calibration.batch_size=2",
    ]
    err = cli_error(["prune-units", *common, f"--output_dir={work}/pu-a"], only=False)
    assert "vision.attn=0.1 removes no query heads" in err and "--allow_empty=true" in err
    assert not (work / "pu-a").exists()
    assert main(["prune-units", *common, "--allow_empty=true", f"--output_dir={work}/pu-b"]) == 0
    assert "vision.attn: asked 0.1 x query heads = 0.4, removed 0" in " ".join(
        capsys.readouterr().out.split()
    )
    row = json.loads((work / "pu-b" / "prune.json").read_text())["rows"][0]
    assert row["modules"]["vision.attn"]["removed"] == 0 and row["modules"]["language.mlp"]["removed"] > 0
    unit_plan = json.loads((work / "pu-b" / "plan.json").read_text())["plans"][-1]
    assert unit_plan["asked"]["vision.attn"]["asked"] == 0.4
