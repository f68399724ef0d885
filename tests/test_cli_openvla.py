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
    data = [f"--dataset.root={oft_dataset}", "--calibration.batches=2", "--calibration.batch_size=2"]
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


def test_prune_units_runs_the_openvla_recipe_on_oft(oft_dir, oft_dataset, tmp_path):
    """The divergence paper's OpenVLA recipe through the OFT adapter: base = the Prismatic VLM's weights
    (names without "vla."), planted movement, global language FFN ranking with protected blocks, vision FFN
    and fused-qkv vision heads; masked and real removal judged the same way (same loss)."""
    import torch
    from safetensors.torch import save_file

    from vlaprune.configs import PolicyConfig
    from vlaprune.policy import load_policy

    handle = load_policy(PolicyConfig(path=str(oft_dir), trust_remote_code=True))
    vla = handle.module.vla
    base = {k: v.detach().clone().contiguous() for k, v in vla.state_dict().items()}
    save_file(base, tmp_path / "vlm.safetensors")
    moved = shutil.copytree(oft_dir, tmp_path / "moved")
    layers = vla.language_model.model.layers
    with torch.no_grad():  # the "VLA" moved channels 0-3 of language block 1 the most
        layers[1].mlp.gate_proj.weight[:4] *= 3.0
    from safetensors.torch import load_file

    weights = load_file(moved / "model.safetensors")
    key = next(k for k in weights if k.endswith("layers.1.mlp.gate_proj.weight"))
    weights[key] = layers[1].mlp.gate_proj.weight.detach().clone().contiguous()
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    n = layers[1].mlp.gate_proj.out_features * (len(layers) - 1)  # block 0 is protected: not ranked
    spec = (
        f"language.mlp=dw_openvla:high:{4 / n}:global:protect=0 vision.siglip.mlp=dw_openvla:low:0.25:global "
        "vision.dino.attn=dw_openvla:high:0.25"
    )
    rows = {}
    for removal in ("masked", "real"):
        out = tmp_path / removal
        argv = [
            "prune-units", f"--policy.path={moved}", "--policy.trust_remote_code=true",
            f"--dataset.root={oft_dataset}", "--calibration.batches=1", "--calibration.batch_size=2",
            f"--base={tmp_path / 'vlm.safetensors'}", f"--spec={spec}", f"--removal={removal}",
            "--compare=magnitude", f"--output_dir={out}",
        ]  # fmt: skip
        assert main(argv) == 0
        report = json.loads((out / "prune.json").read_text())
        plan = json.loads((out / "plan.json").read_text())["plans"][-1]
        assert list(plan["units"]["language"]) == ["1"]  # the planted block, and only it
        assert plan["units"]["language"]["1"]["ffn"] == list(range(4, layers[1].mlp.gate_proj.out_features))
        rows[removal] = report["rows"][0]
    assert rows["real"]["params_removed_pct"] > 0 and rows["masked"]["params_removed_pct"] == 0
    assert abs(rows["real"]["loss"] - rows["masked"]["loss"]) < 1e-4
    assert rows["real"]["units_removed"] == rows["masked"]["units_removed"]


def test_offline_eval_of_oft_and_of_its_pruned_folder(oft_dir, oft_dataset, tmp_path, cli_error):
    """`vlaprune eval --offline` on an OFT folder: OFT's loss and the L1 head's action error on held-out
    episodes; the same numbers again for a reload; closed loop refused in one line."""
    policy = [f"--policy.path={oft_dir}", "--policy.trust_remote_code=true"]
    argv = [
        "eval",
        *policy,
        f"--dataset.root={oft_dataset}",
        "--offline=true",
        "--holdout=0.5",
        "--batch_size=2",
    ]
    assert main([*argv, f"--output={tmp_path / 'a.json'}"]) == 0
    assert main([*argv, f"--output={tmp_path / 'b.json'}"]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["offline"] for n in "ab")
    assert a == b and a["frames"] > 0 and len(a["l1_per_dim"]) == 7
    assert a["loss"] > 0 and abs(a["loss"] - a["l1"]) < 1e-4  # OFT's L1 head: its loss is the action L1
    err = cli_error(
        ["eval", *policy, "--env.type=metaworld", "--env.task=reach-v3", f"--output={tmp_path / 'c.json'}"],
        only=False,
    )
    assert "closed-loop OpenVLA-OFT runs on LIBERO as OFT's own evaluation does" in err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("level, kept", [("drop_half", [0, 2]), ("keep_2", [0, 2])])
def test_drop_half_vision_cuts_both_towers_below_the_read_out(level, kept, oft_dir, tmp_path):
    """The paper's "drop half vision" on OFT: one level for both towers; each tower's read-out block (depth-2)
    counts as its last block, the dead block after it goes too, the read-out block stays read."""
    cut = tmp_path / "cut"
    args = ["drop", f"--policy.path={oft_dir}", "--policy.trust_remote_code=true", f"--drop.vision={level}"]
    assert main([*args, f"--output_dir={cut}", "--latency_calls=1"]) == 0
    plan = json.loads((cut / "plan.json").read_text())["plans"][0]
    gone = [i for i in range(4) if i not in kept]
    assert plan["drops"]["vision.dino"] == gone and plan["drops"]["vision.siglip"] == gone
    from vlaprune.configs import PolicyConfig
    from vlaprune.policy import load_policy

    back = load_policy(PolicyConfig(path=str(cut), trust_remote_code=True))
    assert {n: s.readout.index for n, s in back.layout().stacks.items() if s.readout} == {
        "vision.dino": 1,
        "vision.siglip": 1,
    }
