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

    assert _list_flags("--dataset.episodes=0,1,2") == "--dataset.episodes=[0,1,2]"
    assert _list_flags("--dataset.episodes=[0, 1]") == "--dataset.episodes=[0,1]"
    err = cli_error(["score", "--policy.path=tiny:smolvla", "--dataset.episodes=a,b"])
    assert "--dataset.episodes=0,1,2" in err


# 5. a misspelled flag: one line, the nearest valid flag


def test_misspelled_flag_names_the_nearest_one(cli_error):
    err = cli_error(["drop", "--policy.pth=tiny:smolvla", "--drop.language=1"])
    assert err == (
        "vlaprune: error: unknown flag --policy.pth; did you mean --policy.path? (--help lists every flag)"
    )
    assert "did you mean --drop.language?" in cli_error(["drop", "--drop.langauge=1"])
