"""`vlaprune dtr` on an OpenVLA-OFT folder (the tiny mirror): score, cut, recover and measure through the same
code as lerobot policies; with --env.type=libero, closed loop runs OFT's LIBERO pipeline."""

import pytest

from vlaprune.cli import main
from vlaprune.evaluate.closed_loop import close_envs
from vlaprune.experiments.store import Store


def dtr_args(oft_dir, data, out):
    return [
        "dtr",
        f"--policy.path={oft_dir}",
        "--policy.trust_remote_code=true",
        f"--dataset.root={data}",
        "--sweep.components=language",
        "--sweep.levels=0.5",
        "--sweep.methods=gateprobe",
        "--recover.steps=1",
        "--recover.batch_size=2",
        "--holdout=0.34",
        "--calibration.batches=1",
        "--calibration.batch_size=2",
        f"--output_dir={out}",
    ]


@pytest.fixture(scope="module")
def oft_frames(tmp_path_factory):
    from vlaprune.tiny.dataset import write_tiny_dataset

    root = tmp_path_factory.mktemp("oft-dtr") / "libero_spatial"
    return write_tiny_dataset(
        root, state_dim=8, action_dim=7, cameras=("image", "wrist_image"), image_size=32
    )


def test_dtr_on_oft_scores_cuts_recovers_and_measures(oft_dir, oft_frames, tmp_path):
    assert main(dtr_args(oft_dir, oft_frames, tmp_path / "run")) == 0
    rows = Store(tmp_path / "run").rows("measure")
    assert len(rows) == 2 and {tuple(r["spec"]["drops"].get("language", [])) != () for r in rows} == {
        True,
        False,
    }
    assert all(r["after"]["offline"]["loss"] > 0 and r["recovery"] for r in rows)


def test_dtr_distills_every_row_from_the_unpruned_oft_policy(oft_dir, oft_frames, tmp_path):
    """--recover.mode=distill: the teacher is the unpruned policy the sweep starts from, saved once; the
    baseline is distilled from its own copy (the same recipe and budget as the cut variant)."""
    import torch

    from vlaprune.configs import PolicyConfig
    from vlaprune.policy import load_policy

    assert main([*dtr_args(oft_dir, oft_frames, tmp_path / "run"), "--recover.mode=distill"]) == 0
    rows = Store(tmp_path / "run").rows("measure")
    teacher = tmp_path / "run" / "work" / "teacher"
    assert len(rows) == 2 and all(r["recovery"]["mode"] == "distill" for r in rows)
    assert {r["recovery"]["teacher"] for r in rows} == {str(teacher)}
    trusted = dict(trust_remote_code=True)
    saved = load_policy(PolicyConfig(path=str(teacher), **trusted)).module.state_dict()
    original = load_policy(PolicyConfig(path=str(oft_dir), **trusted)).module.state_dict()
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)


@pytest.mark.slow  # ~80 s on 2 cores: LIBERO env creation + resets (~20 s each) dominate, not the model
def test_dtr_on_oft_in_libero_with_lora_recovery(oft_dir, oft_frames, tmp_path):
    """The issue's done-when: score, cut, LoRA recovery (OFT's recipe), closed loop, report."""
    args = dtr_args(oft_dir, oft_frames, tmp_path / "run")
    args += ["--env.type=libero", "--env.task=libero_spatial/0", "--env.max_steps=2", "--eval.n_episodes=1"]
    try:
        assert main([*args, "--probe_episodes=1", "--recover.mode=lora"]) == 0
    finally:
        close_envs()
    rows = Store(tmp_path / "run").rows("measure")
    assert len(rows) == 2 and all("libero_spatial/0" in r["after"]["tasks"] for r in rows)
    assert all(r["recovery"]["mode"] == "lora" for r in rows)
    final = next((tmp_path / "run" / "work").glob("*/recover/final"))
    assert any(final.glob("action_head--*_checkpoint.pt"))
    assert not any("lora" in k for k in _keys(final))  # merged on save
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "success after recovery" in (tmp_path / "run" / "report.md").read_text()


def _keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_dtr_vision_component_cuts_both_oft_towers(oft_dir, oft_frames, tmp_path):
    """`--sweep.components=vision` on OFT is one component of both towers ("drop half vision", Table 1)."""
    args = dtr_args(oft_dir, oft_frames, tmp_path / "run")
    args = [a if not a.startswith("--sweep.components") else "--sweep.components=vision" for a in args]
    args = [a if not a.startswith("--sweep.levels") else "--sweep.levels=drop_half" for a in args]
    assert main(args) == 0
    plans = Store(tmp_path / "run").rows("plan")
    assert [p["spec"]["component"] for p in plans] == ["vision"]
    drops = plans[0]["drops"]
    assert set(drops) == {"vision.dino", "vision.siglip"}  # each tower by its read-out rule
    cut = next(r for r in Store(tmp_path / "run").rows("measure") if r["spec"]["drops"])
    assert cut["spec"]["drops"] == drops and cut["after"]["offline"]["loss"] > 0
