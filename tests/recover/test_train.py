"""Recovery fine-tuning: it learns, it resumes to the same weights, its modes save loadable policies."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlaprune.cli import main
from vlaprune.configs import DatasetConfig, PolicyConfig
from vlaprune.policy import load_policy, wrap
from vlaprune.recover.train import RecoverConfig, run


def cfg(tmp, data, **kw):
    base = dict(
        policy=PolicyConfig(path="tiny:smolvla"),
        dataset=DatasetConfig(root=str(data)),
        output_dir=str(tmp),
        steps=6,
        batch_size=4,
        save_every=2,
        log_every=1,
    )
    return RecoverConfig(**{**base, **kw})


def mean_loss(policy, data, batches=4):
    from vlaprune.data import Data, policy_loss

    bs = Data(wrap(policy), DatasetConfig(root=str(data))).batches(batches, 8, seed=5)
    loss = policy_loss(policy, seed=5)
    with torch.no_grad():
        return sum(float(loss(i, b)) for i, b in enumerate(bs)) / batches


def test_recovery_lowers_training_loss(tiny_dataset, tmp_path):
    before = mean_loss(load_policy("tiny:smolvla").module, tiny_dataset)
    summary = run(
        cfg(
            tmp_path / "r",
            tiny_dataset,
            steps=60,
            batch_size=8,
            lr=3e-3,
            trainable="all",
            save_every=30,
            log_every=10,
        )
    )
    after = mean_loss(load_policy(tmp_path / "r" / "final").module, tiny_dataset)
    assert after < 0.7 * before, (before, after)
    assert summary["steps_this_run"] == 60 and summary["samples_per_s"] > 0
    log = [json.loads(line) for line in (tmp_path / "r" / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40, 50, 60]


def test_killed_and_resumed_run_reaches_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    import lerobot.scripts.lerobot_train as lt

    run(cfg(tmp_path / "a", tiny_dataset))
    real, calls = lt.update_policy, {"n": 0}

    def crash_at_five(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # dies during step 5: checkpoint 4 is the last complete one
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(lt, "update_policy", crash_at_five)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg(tmp_path / "b", tiny_dataset))
    monkeypatch.setattr(lt, "update_policy", real)
    assert (tmp_path / "b" / "checkpoints" / "last").read_text() == "000004"
    summary = run(cfg(tmp_path / "b", tiny_dataset, resume=True))
    assert summary["steps_this_run"] == 2
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(tmp_path / "a" / "checkpoints" / "000002" / "trainee.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in a)  # training did change the weights


@pytest.mark.parametrize(
    "mode, extra", [("lora", {"lora_r": 4}), ("distill", {"teacher": "tiny:smolvla", "distill_hidden": 0.1})]
)
def test_lora_and_distill_save_policies_that_load(mode, extra, tiny_dataset, tmp_path):
    from vlaprune.adapters.lerobot.batch import example_batch

    run(cfg(tmp_path / mode, tiny_dataset, mode=mode, steps=3, save_every=3, **extra))
    policy = load_policy(tmp_path / mode / "final").module
    assert not any("lora" in n for n, _ in policy.named_parameters())  # adapters merged into the weights
    policy.reset()
    assert torch.isfinite(policy.predict_action_chunk(example_batch(policy))).all()
    assert (tmp_path / mode / "checkpoints" / "000003" / "trainee.safetensors").is_file()
    if mode == "distill":
        row = json.loads((tmp_path / mode / "train.log").read_text().splitlines()[-1])
        assert {"task_loss", "match_loss", "hidden_loss"} <= set(row)


def test_pruned_policy_recovers(tiny_dataset, tmp_path):
    from vlaprune.tiny.pi import tiny_pi

    policy = wrap(tiny_pi("pi0"))
    policy.drop_blocks({"language": [1]})
    policy.save(tmp_path / "pruned")
    run(
        cfg(
            tmp_path / "r",
            tiny_dataset,
            policy=PolicyConfig(path=str(tmp_path / "pruned")),
            steps=2,
            save_every=2,
        )
    )
    recovered = load_policy(tmp_path / "r" / "final").module
    from vlaprune.adapters.keep_kv import is_kv_only

    pwe = recovered.model.paligemma_with_expert  # keep-K/V language drop: the expert keeps its 4 blocks
    assert len(pwe.gemma_expert.model.layers) == 4
    language = pwe.paligemma.model.language_model.layers
    assert [is_kv_only(b) for b in language] == [False, True, False, False]


def test_bad_input(tiny_dataset, tmp_path, cli_error):
    from vlaprune.tiny.dataset import write_tiny_dataset

    bad_data = write_tiny_dataset(tmp_path / "state6", episodes=1, frames=6, state_dim=6)
    assert (
        main(
            [
                "recover",
                "--policy.path=tiny:smolvla",
                f"--dataset.root={tiny_dataset}",
                "--steps=2",
                "--batch_size=2",
                "--save_every=1",
                f"--output_dir={tmp_path / 'run'}",
            ]
        )
        == 0
    )
    common = [f"--dataset.root={tiny_dataset}", "--batch_size=2"]
    cases = [
        (
            ["--policy.path=tiny:smolvla", *common, "--steps=0", f"--output_dir={tmp_path / 'x'}"],
            "at least one",
        ),
        (
            ["--policy.path=tiny:smolvla", f"--dataset.root={bad_data}", f"--output_dir={tmp_path / 'x'}"],
            "shape (6,) in the dataset",
        ),
        (
            [
                "--policy.path=tiny:smolvla",
                *common,
                "--steps=2",
                "--resume=true",
                f"--output_dir={tmp_path / 'run'}",
            ],
            "holds a run finished at step 2",  # --steps=N > 2 extends it (tests/test_first_hour.py)
        ),
        (
            [
                "--policy.path=tiny:pi0",
                *common,
                "--steps=3",
                "--resume=true",
                f"--output_dir={tmp_path / 'run'}",
            ],
            "cannot resume",  # extending with another model: its checkpoint does not load
        ),
        (
            ["--policy.path=tiny:smolvla", *common, "--mode=magic", f"--output_dir={tmp_path / 'x'}"],
            "unknown --mode",
        ),
        (
            ["--policy.path=tiny:smolvla", *common, "--mode=distill", f"--output_dir={tmp_path / 'x'}"],
            "--teacher",
        ),
        (["--policy.path=tiny:smolvla", *common, f"--output_dir={tmp_path / 'run'}"], "--resume=true"),
    ]
    for args, message in cases:
        assert message in cli_error(["recover", *args]), args
    assert not (tmp_path / "x").exists()


def test_resume_from_another_model_is_refused(tiny_dataset, tmp_path, monkeypatch, capsys):
    import lerobot.scripts.lerobot_train as lt

    real = lt.update_policy
    calls = {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("crash")
        return real(*a, **k)

    monkeypatch.setattr(lt, "update_policy", crash)
    with pytest.raises(RuntimeError):
        run(cfg(tmp_path / "r", tiny_dataset, steps=4))
    monkeypatch.setattr(lt, "update_policy", real)
    assert (
        main(
            [
                "recover",
                "--policy.path=tiny:pi0",
                f"--dataset.root={tiny_dataset}",
                "--steps=4",
                "--batch_size=4",
                "--resume=true",
                f"--output_dir={tmp_path / 'r'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "written for another model" in err and "Traceback" not in err


def test_lr_sets_the_scheduler_peak_and_moves_its_floor(tmp_path):
    """--lr is the schedule's peak (as lerobot-train's --policy.optimizer_lr with scheduler_decay_lr), and the
    decay floor keeps its ratio to the peak."""
    from vlaprune.recover.train import _optimizer

    policy = load_policy("tiny:smolvla").module
    preset = policy.config.get_scheduler_preset()
    ratio = preset.decay_lr / preset.peak_lr
    c = cfg(tmp_path, tmp_path, lr=3e-3, steps=10)
    optimizer, scheduler = _optimizer(policy, policy, c)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(3e-3, rel=0.05)  # the peak is --lr, not the preset's
    assert lrs[-1] == pytest.approx(3e-3 * ratio, rel=1e-6)  # the floor moved with it


@pytest.mark.parametrize(
    "config, want", [({"dtype": "bfloat16"}, "bf16"), ({"dtype": "float32"}, "no"), ({}, "no")]
)
def test_mixed_precision_follows_the_policy_config(config, want, tmp_path):
    from vlaprune.recover.train import _mixed_precision

    (tmp_path / "config.json").write_text(json.dumps({"type": "pi0", **config}))
    c = cfg(tmp_path / "o", tmp_path, policy=PolicyConfig(path=str(tmp_path)))
    assert c.mixed_precision == "auto" and _mixed_precision(c) == want
    assert _mixed_precision(cfg(tmp_path / "o", tmp_path, mixed_precision="fp16")) == "fp16"


def test_distillation_replays_the_teachers_noise_on_every_generator():
    from vlaprune.recover.modes import rng_state, set_rng_state

    state = rng_state()
    a = torch.randn(3)
    set_rng_state(state)
    assert torch.equal(torch.randn(3), a)
    assert state[1] is None or len(state[1]) == torch.cuda.device_count()
