"""OpenVLA-OFT from the command line, on the tiny mirror with its head: inspect, score gateprobe, drop
drop_half, save, strict reload, one recovery step; bad input refused in one line with nothing written."""

import json
import shutil

import pytest

from vlaprune.cli import main


@pytest.fixture(scope="module")
def oft_dataset(tmp_path_factory):
    """LIBERO-like frames: two cameras, 8-D state, 7-D actions (what the tiny OFT head and projector read)."""
    from vlaprune.tiny.dataset import write_tiny_dataset

    root = tmp_path_factory.mktemp("oft-data") / "libero_spatial"
    return write_tiny_dataset(
        root, state_dim=8, action_dim=7, cameras=("image", "wrist_image"), image_size=32
    )


def test_oft_chain(oft_dir, oft_dataset, tmp_path):
    policy = [f"--policy.path={oft_dir}", "--policy.trust_remote_code=true"]
    data = [f"--dataset.root={oft_dataset}", "--batches=2", "--batch_size=2"]
    assert main(["inspect", *policy, f"--output={tmp_path / 'anatomy.json'}"]) == 0
    anat = json.loads((tmp_path / "anatomy.json").read_text())
    stacks = {s["name"]: s for s in anat["stacks"]}
    assert set(stacks) == {"language", "vision.dino", "vision.siglip", "action"}
    assert stacks["vision.dino"]["flops"] > 0 and stacks["vision.siglip"]["flops"] > 0
    assert stacks["vision.dino"]["block_notes"][2] == "read by the projector"

    assert main(["score", *policy, *data, "--method=gateprobe", f"--output={tmp_path / 's.json'}"]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())["results"]["gateprobe"]["scores"]
    assert scores["vision.dino"][3] == 0.0 and scores["vision.siglip"][3] == 0.0  # computed, never read
    assert all(v > 0 for v in scores["language"] + scores["action"])

    cut = tmp_path / "cut"
    assert (
        main(["drop", *policy, "--drop.language=drop_half", f"--output_dir={cut}", "--latency_calls=1"]) == 0
    )
    assert json.loads((cut / "config.json").read_text())["text_config"]["num_hidden_layers"] == 2
    assert (cut / "model.safetensors").is_file() and any(cut.glob("action_head--*_checkpoint.pt"))

    # strict reload of the cut (scores need its loss), then one recovery step from it
    reloaded = [f"--policy.path={cut}", "--policy.trust_remote_code=true"]
    assert main(["score", *reloaded, *data, "--method=gateprobe", f"--output={tmp_path / 'c.json'}"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["blocks"]["language"] == 2
    rec = tmp_path / "rec"
    args = ["recover", *reloaded, f"--dataset.root={oft_dataset}", "--steps=1", "--batch_size=2"]
    assert main([*args, f"--output_dir={rec}"]) == 0
    log = [json.loads(line) for line in (rec / "train.log").read_text().splitlines()]
    assert log[-1]["step"] == 1 and log[-1]["l1"] > 0
    final = json.loads((rec / "final" / "plan.json").read_text())
    assert final["plans"][0]["drops"]["language"] == [1, 3] and final["trained_on"]
    assert (
        main(
            [
                "inspect",
                "--policy.path=" + str(rec / "final"),
                "--policy.trust_remote_code=true",
                f"--output={tmp_path / 'f.json'}",
                "--flops=false",
            ]
        )
        == 0
    )


def test_bad_input_is_one_line_and_writes_nothing(oft_dir, tmp_path, cli_error):
    out = tmp_path / "out"
    line = cli_error(["drop", f"--policy.path={oft_dir}", "--drop.language=1", f"--output_dir={out}"])
    assert "trust_remote_code=true" in line
    no_head = tmp_path / "no-head"
    shutil.copytree(oft_dir, no_head)
    next(no_head.glob("action_head--*")).unlink()
    trusted = ["--policy.trust_remote_code=true", f"--output_dir={out}"]
    line = cli_error(["drop", f"--policy.path={no_head}", "--drop.language=1", *trusted])
    assert "no action_head--<step>_checkpoint.pt" in line
    line = cli_error(
        ["drop", f"--policy.path={oft_dir}", "--drop.blocks=vision.dino=1,2", *trusted], only=False
    )
    assert "block 2 is the block the model reads" in line
    assert not out.exists()
