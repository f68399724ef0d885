"""OpenVLA-OFT's fine-tuning recipe on the tiny OFT mirror: LoRA as OFT's finetune.py sets it up (peft on the
VLA's linear layers, head and proprio projector trained fully, everything else frozen), OFT's optimizer,
merged LoRA on save, distillation from the unpruned teacher, and a base OpenVLA with a fresh OFT head."""

import copy
import json

import pytest
import torch

from vlaprune.adapters.openvla.policy import example_batch, predict_actions
from vlaprune.adapters.openvla.recipe import lora, optimizer
from vlaprune.configs import DatasetConfig, PolicyConfig
from vlaprune.policy import load_policy
from vlaprune.recover.modes import Distill, wrap_lora
from vlaprune.recover.train import RecoverConfig, _optimizer, run


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """LIBERO-like frames: two cameras, 8-D state, 7-D actions (what the tiny OFT head and projector read)."""
    from vlaprune.tiny.dataset import write_tiny_dataset

    root = tmp_path_factory.mktemp("oft-recipe") / "libero_spatial"
    return write_tiny_dataset(
        root, state_dim=8, action_dim=7, cameras=("image", "wrist_image"), image_size=32
    )


def _load(path, **kw):
    return load_policy(PolicyConfig(path=str(path), trust_remote_code=True, **kw))


def test_lora_is_finetune_pys_and_trains_only_adapters_head_and_projector(oft):
    policy = oft.module
    base = {k: v.clone() for k, v in policy.vla.state_dict().items()}
    head = copy.deepcopy(policy.action_head.state_dict())
    trainee = wrap_lora(policy, None, "")
    trained = [n for n, p in trainee.named_parameters() if p.requires_grad]
    assert trained and all(
        ".lora_" in n or n.startswith(("policy.action_head.", "policy.proprio_projector.")) for n in trained
    )
    assert {n for n in trained if not n.startswith("policy.vla.")} == {
        f"policy.{m}.{k}"
        for m in ("action_head", "proprio_projector")
        for k in getattr(policy, m).state_dict()
    }
    adapted = {n: m for n, m in trainee.named_modules() if hasattr(m, "lora_A")}
    towers = ("featurizer.", "fused_featurizer.", "projector.", "language_model.model.layers.")
    assert all(any(t in n for n in adapted) for t in towers)  # finetune.py wraps the whole VLA: all-linear
    assert not any(n.endswith("lm_head") for n in adapted)  # peft's all-linear leaves the output layer out
    layer = next(iter(adapted.values()))
    assert layer.r["default"] == 32 and layer.scaling["default"] == 16 / 32  # rank 32, alpha min(32, 16)
    assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)  # dropout 0.0
    assert not layer.lora_B["default"].weight.any()  # peft's "gaussian" init: B = 0, so no change at start

    batch = example_batch(policy, 2)
    opt, sched = optimizer([p for p in trainee.parameters() if p.requires_grad])
    losses = []
    for _ in range(6):
        loss, _ = trainee(batch)
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in trainee.policy.vla.state_dict().items()
        if "lora_" not in k
    }
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)  # frozen
    assert any(not torch.equal(v, head[k]) for k, v in trainee.policy.action_head.state_dict().items())
    assert layer.lora_B["default"].weight.any()
    want = layer.base_layer.weight + layer.scaling["default"] * (
        layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    name = next(iter(adapted)).removeprefix("policy.vla.base_model.model.")
    merged = trainee.merge_and_unload()
    assert merged is policy and not any(hasattr(m, "lora_A") for m in merged.modules())
    torch.testing.assert_close(merged.vla.get_submodule(name).weight, want.detach())


def test_oft_optimizer_is_finetune_pys(oft, tmp_path):
    cfg = RecoverConfig(output_dir=str(tmp_path), mode="lora")
    trainee = lora(oft.module)
    opt, sched = _optimizer(oft.module, trainee, cfg)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == 5e-4
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert type(sched) is torch.optim.lr_scheduler.MultiStepLR
    assert dict(sched.milestones) == {100_000: 1} and sched.gamma == 0.1
    n_trainable = sum(p.requires_grad for p in trainee.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    opt2, _ = _optimizer(oft.module, trainee, RecoverConfig(output_dir=str(tmp_path), lr=1e-3))
    assert opt2.param_groups[0]["lr"] == 1e-3


def test_lora_recovery_saves_the_merged_model(oft_dir, frames, tmp_path):
    out = tmp_path / "rec"
    cfg = RecoverConfig(
        policy=PolicyConfig(path=str(oft_dir), trust_remote_code=True),
        dataset=DatasetConfig(root=str(frames)),
        output_dir=str(out),
        mode="lora",
        steps=3,
        batch_size=2,
        save_every=3,
    )
    summary = run(cfg)
    assert summary["mode"] == "lora" and summary["steps_this_run"] == 3
    # the checkpoint holds the adapters; rebuilt and merged by hand, it gives the saved policy's actions
    from safetensors.torch import load_file

    ckpt = load_file(str(next((out / "checkpoints").glob("0*")) / "trainee.safetensors"))
    assert any(".lora_B." in k and v.any() for k, v in ckpt.items())
    original = _load(oft_dir)
    trainee = lora(_load(oft_dir).module)
    trainee.load_state_dict(ckpt, strict=True)
    merged = trainee.merge_and_unload().eval()
    final = _load(out / "final").module
    assert not any(hasattr(m, "lora_A") for m in final.modules())
    batch = example_batch(final, 2)
    torch.testing.assert_close(predict_actions(final, batch), predict_actions(merged, batch))
    assert not torch.allclose(predict_actions(final, batch), predict_actions(original.module, batch))
    base_llm = original.module.vla.language_model.state_dict()
    assert any(not torch.equal(v, base_llm[k]) for k, v in final.vla.language_model.state_dict().items())


@pytest.mark.parametrize("head", ["l1", "diffusion"])
def test_distillation_matches_the_teachers_head_output(head, tmp_path):
    from vlaprune.tiny.oft import write_tiny_oft

    folder = write_tiny_oft(tmp_path / "oft", head=head)
    teacher = _load(folder).module
    student = copy.deepcopy(teacher)
    batch = example_batch(teacher, 2)
    torch.manual_seed(1)
    own, _ = teacher(batch)
    torch.manual_seed(1)
    loss, info = Distill(student, teacher, alpha=0.5)(batch)
    # same weights, same batch, same noise and time samples: the match is exactly 0, the task loss OFT's own
    assert info["match_loss"] == 0.0 and info["task_loss"] == pytest.approx(own.item())
    with torch.no_grad():
        for p in student.action_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(1)
    loss, info = Distill(student, teacher, alpha=0.5)(batch)
    assert info["match_loss"] > 0
    assert loss.item() == pytest.approx(0.5 * info["task_loss"] + 0.5 * info["match_loss"], rel=1e-5)


def test_distill_recovery_on_oft(oft_dir, frames, tmp_path):
    from vlaprune.cli import main

    cut = tmp_path / "cut"
    policy = [f"--policy.path={oft_dir}", "--policy.trust_remote_code=true"]
    assert (
        main(["drop", *policy, "--drop.language=drop_half", f"--output_dir={cut}", "--latency_calls=1"]) == 0
    )
    args = ["recover", f"--policy.path={cut}", "--policy.trust_remote_code=true", f"--dataset.root={frames}"]
    args += [
        "--mode=distill",
        f"--teacher={oft_dir}",
        "--steps=2",
        "--batch_size=2",
        f"--output_dir={tmp_path / 'r'}",
    ]
    assert main(args) == 0
    log = [json.loads(line) for line in (tmp_path / "r" / "train.log").read_text().splitlines()]
    assert log[-1]["match_loss"] > 0 and log[-1]["task_loss"] > 0


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny mirror without its head and projector files: a base OpenVLA running OFT's model code."""
    from vlaprune.tiny.oft import write_tiny_oft

    return write_tiny_oft(tmp_path_factory.mktemp("base") / "openvla", head="", proprio=False)


@pytest.mark.parametrize("kind", ["l1", "diffusion"])
def test_fresh_oft_head_on_a_base_openvla(kind, base_dir, frames, tmp_path):
    torch.manual_seed(1)
    a = _load(base_dir, oft_head=kind).module
    torch.manual_seed(2)
    b = _load(base_dir, oft_head=kind).module  # seeded itself: the global RNG's state does not matter
    d = a.vla.config.text_config.hidden_size
    resnet = a.action_head.model if kind == "l1" else a.action_head.noise_predictor.mlp_resnet
    assert resnet.fc1.weight.shape == (d, 7 * d) and len(resnet.mlp_resnet_blocks) == 2  # finetune.py's
    assert resnet.fc2.out_features == 7 and a.proprio_projector.fc1.weight.shape == (d, 8)
    assert (a.noisy_action_projector is not None) == (kind == "diffusion")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the same head on every load
    assert resnet.fc1.weight.std() > 0
    from safetensors.torch import load_file

    saved, own = load_file(str(base_dir / "model.safetensors")), a.vla.state_dict()
    assert saved.keys() == own.keys() and all(torch.equal(own[k], v) for k, v in saved.items())
    out = tmp_path / "rec"
    cfg = RecoverConfig(
        policy=PolicyConfig(path=str(base_dir), trust_remote_code=True, oft_head=kind),
        dataset=DatasetConfig(root=str(frames)),
        output_dir=str(out),
        mode="lora",
        steps=1,
        batch_size=2,
    )
    assert run(cfg)["last_loss"] > 0
    final = _load(out / "final").module
    assert final.action_head is not None and final.proprio_projector is not None


def test_fresh_head_bad_input(oft_dir, base_dir, tmp_path, cli_error):
    inspect = ["inspect", "--policy.trust_remote_code=true", f"--output={tmp_path / 'a.json'}"]
    err = cli_error([*inspect, f"--policy.path={base_dir}", "--policy.oft_head=token"])
    assert "--policy.oft_head='token'" in err and "l1 or diffusion" in err
    err = cli_error([*inspect, f"--policy.path={oft_dir}", "--policy.oft_head=l1"])
    assert "already holds an OFT action head" in err
    err = cli_error([*inspect, "--policy.path=tiny:smolvla", "--policy.oft_head=l1"])
    assert "applies to OpenVLA" in err
    assert not (tmp_path / "a.json").exists()
