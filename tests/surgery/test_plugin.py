"""Pruned checkpoints in lerobot's own tools, through the lerobot_policy_vlaprune plugin.

The shipped demo SmolVLA, cut by `vlaprune drop`, goes through vanilla `lerobot-train` (console script, two
steps, then a resume) and `lerobot-eval` (MetaWorld, one short episode); vlaprune loads lerobot-train's
output back with the actions lerobot's own loader gives. Every cut kind on tiny SmolVLA / pi0 / pi0.5 goes
through lerobot's `make_policy` (the factory both tools use), a training step and `save_pretrained`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.surgery.conftest import actions
from vlaprune.cli import main
from vlaprune.errors import VlapruneError
from vlaprune.experiments import assets
from vlaprune.policy import load_policy, wrap

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def lerobot(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


def train_and_resume(policy: Path, repo_id: str, root: Path, out: Path, total: int, cwd: Path) -> Path:
    """Vanilla lerobot-train: 2 steps from `policy`, then a resume to `total` steps; the last checkpoint."""
    common = ["--num_workers=0", "--policy.device=cpu", "--policy.push_to_hub=false", "--wandb.enable=false"]
    data = [f"--dataset.repo_id={repo_id}", f"--dataset.root={root}", "--batch_size=2", "--save_freq=2"]
    r = lerobot(
        "lerobot-train",
        f"--policy.path={policy}",
        *data,
        "--steps=2",
        f"--output_dir={out}",
        *common,
        cwd=cwd,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    config = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    r = lerobot("lerobot-train", f"--config_path={config}", "--resume=true", f"--steps={total}", cwd=cwd)
    assert r.returncode == 0 and "Resuming" in r.stderr + r.stdout, r.stderr[-3000:]
    return out / "checkpoints" / f"{total:06d}" / "pretrained_model"


def lerobot_load(folder: Path):
    import lerobot_policy_vlaprune  # noqa: F401  (lerobot's tools import it at start)
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    cfg = PreTrainedConfig.from_pretrained(folder)
    return get_policy_class(cfg.type).from_pretrained(folder, config=cfg)


@pytest.mark.skipif(not assets.available(), reason="demo assets not built")
def test_lerobot_train_resume_and_eval_a_pruned_checkpoint(tmp_path):
    src = assets.relocated(assets.ASSETS / "policy")
    cut = tmp_path / "cut"
    args = ["drop", f"--policy.path={src}", "--drop.vision=1", "--latency_calls=1", "--warmup_calls=0"]
    assert main([*args, f"--output_dir={cut}"]) == 0
    assert json.loads((cut / "config.json").read_text())["type"] == "vlaprune_smolvla"
    data = assets.ASSETS / "dataset"
    train = tmp_path / "train"
    ckpt = train_and_resume(cut, "local/metaworld4", data, train, 4, tmp_path)
    assert json.loads((ckpt / "config.json").read_text())["type"] == "vlaprune_smolvla"
    trained = load_policy(ckpt)  # vlaprune loads lerobot-train's output back
    assert len(trained.layout().stacks["vision"]) == len(load_policy(src).layout().stacks["vision"]) - 1
    assert torch.equal(actions(trained.module), actions(lerobot_load(ckpt)))
    assert not torch.equal(actions(trained.module), actions(load_policy(cut).module))  # it trained
    out = tmp_path / "eval"
    r = lerobot(
        "lerobot-eval",
        f"--policy.path={ckpt}",
        "--env.type=metaworld",
        "--env.task=drawer-close-v3",
        "--env.episode_length=10",
        "--eval.n_episodes=1",
        "--eval.batch_size=1",
        "--policy.device=cpu",
        f"--output_dir={out}",
        '--rename_map={"observation.image": "observation.images.top"}',
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "eval_info.json").read_text())["overall"]["n_episodes"] == 1


def _cut(handle, kind: str) -> None:
    if kind == "keep_kv":
        handle.drop_blocks({"language": [1]})
    elif kind == "pair":
        handle.drop_blocks({"language": [2, 3]}, mode="pair")
    elif kind == "action_only":  # drop_half of the expert, every language block kept
        handle.drop_blocks({"action": [1, 3]})
    elif kind == "vision":
        handle.drop_blocks({"vision": [1]})
    elif kind == "mlp":
        handle.drop_blocks({"action": [1]}, part="mlp")
    else:  # FFN units: half the channels of language block 0
        mlp = handle.layout().stacks["language"].blocks[0].mlp
        n = mlp.up_proj.out_features
        handle.prune_units({"language": {"0": {"ffn": list(range(0, n, 2))}}})


@pytest.mark.parametrize(
    "family, kind",
    [
        ("smolvla", "keep_kv"),
        ("smolvla", "pair"),
        ("smolvla", "action_only"),
        ("pi0", "keep_kv"),
        ("pi0", "action_only"),
        ("pi0", "vision"),
        ("pi0", "units"),
        ("pi05", "keep_kv"),
        ("pi05", "mlp"),
        ("pi05", "units"),
    ],
)
def test_lerobot_factory_trains_saves_and_vlaprune_reloads(family, kind, fresh, tiny_dataset, tmp_path):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy

    from vlaprune.adapters.lerobot.batch import training_pass

    handle = wrap(fresh(family))
    _cut(handle, kind)
    out = handle.save(tmp_path / "cut")
    record = json.loads((out / "plan.json").read_text())  # the family's own type where its config can say it
    assert record["lerobot_type"] == (family if record["family_loader_ok"] else f"vlaprune_{family}")
    import lerobot_policy_vlaprune  # noqa: F401

    cfg = PreTrainedConfig.from_pretrained(out, cli_overrides=["--n_action_steps=2"])
    cfg.pretrained_path = out
    meta = LeRobotDatasetMetadata("local/tiny", root=tiny_dataset)
    policy = make_policy(cfg, ds_meta=meta)  # what lerobot-train and lerobot-eval call
    assert policy.config.n_action_steps == 2  # the CLI override reaches the loaded policy
    assert sum(p.numel() for p in policy.parameters()) == sum(p.numel() for p in handle.module.parameters())
    torch.testing.assert_close(actions(policy), actions(handle.module))
    policy.train()
    loss = training_pass(policy, 2)()[0]
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    policy.eval()
    policy.save_pretrained(tmp_path / "trained")  # as lerobot-train writes its checkpoints
    back = load_policy(tmp_path / "trained")
    assert torch.equal(actions(back.module), actions(policy))
    if not record["family_loader_ok"]:  # the plugin type's config carries the record through lerobot-train
        assert [p.kind for p in back.record.plans] == [p.kind for p in handle.record.plans]


def test_tampered_checkpoints_are_refused_by_both_loaders(fresh, tmp_path, cli_error):
    handle = wrap(fresh("pi0"))
    handle.drop_blocks({"language": [1]})
    good = handle.save(tmp_path / "good")

    def variant(name: str, edit) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        edit(folder)
        return folder

    def config_edit(fn):
        def edit(folder):
            cfg = json.loads((folder / "config.json").read_text())
            fn(cfg)
            (folder / "config.json").write_text(json.dumps(cfg))
            (folder / "plan.json").unlink()  # as in lerobot-train's output: the record is in config.json

        return edit

    def other_weights(folder):
        from safetensors.torch import save_model

        save_model(fresh("pi0"), str(folder / "model.safetensors"))  # the unpruned model's tensors

    no_record = variant("no_record", config_edit(lambda c: c.pop("vlaprune")))
    foreign = variant("foreign", config_edit(lambda c: c.update(type="vlaprune_xvla")))
    shape = variant("shape", other_weights)
    broken_plan = variant("broken_plan", lambda f: (f / "plan.json").write_text("{not json"))
    for folder, message in [
        (no_record, "pruning record is missing or incomplete"),
        (foreign, "policy type 'vlaprune_xvla' is not one this vlaprune knows"),
        (shape, "do not match the pruned architecture"),
        (broken_plan, "is not valid JSON"),
    ]:
        with pytest.raises(VlapruneError, match=message) as e:
            load_policy(folder)
        assert "\n" not in str(e.value)
        out = tmp_path / f"eval_{folder.name}"
        assert message.split(" (")[0] in cli_error(["inspect", f"--policy.path={folder}", f"--output={out}"])
        assert not out.exists()
    with pytest.raises(VlapruneError, match="pruning record is missing"):
        lerobot_load(no_record)
    with pytest.raises(VlapruneError, match="do not match the pruned architecture"):
        lerobot_load(shape)
    with pytest.raises(ValueError, match="'vlaprune_xvla'.*is not registered"):
        lerobot_load(foreign)


def test_lerobot_eval_refuses_a_tampered_checkpoint_in_one_line(fresh, tmp_path):
    handle = wrap(fresh("pi0"))
    handle.drop_blocks({"language": [1]})
    out = handle.save(tmp_path / "ck")
    from safetensors.torch import save_model

    save_model(fresh("pi0"), str(out / "model.safetensors"))  # weights of another shape
    r = lerobot(
        "lerobot-eval",
        f"--policy.path={out}",
        "--env.type=metaworld",
        "--env.task=drawer-close-v3",
        "--eval.n_episodes=1",
        "--eval.batch_size=1",
        f"--output_dir={tmp_path / 'e'}",
        cwd=tmp_path,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (
        lines[-1].startswith("lerobot-eval: error:") and "do not match the pruned architecture" in lines[-1]
    )
    assert not (tmp_path / "e").exists()


def _with_processors(handle, folder: Path, dataset: Path) -> None:
    """Save the policy's processors (normalized with the dataset's stats) into a checkpoint folder, with the
    tiny stand-in tokenizer's local path in place of the hub id pi0's processor hard-codes."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from vlaprune.data import processors

    pre, post = processors(handle, LeRobotDatasetMetadata("local/tiny", root=dataset).stats)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    for f in folder.glob("policy_*processor.json"):
        text = f.read_text()
        for hub_id, local in handle.tokenizers.items():
            text = text.replace(hub_id, local)
        f.write_text(text)


@pytest.mark.parametrize("family, kind", [("pi0", "keep_kv"), ("pi05", "units"), ("pi05", "action_only")])
def test_lerobot_train_console_on_tiny_pi_cuts(family, kind, fresh, tiny_dataset, tmp_path):
    handle = wrap(fresh(family))
    _cut(handle, kind)
    cut = handle.save(tmp_path / "cut")
    _with_processors(handle, cut, tiny_dataset)
    ckpt = train_and_resume(cut, "local/tiny", tiny_dataset, tmp_path / "train", 3, tmp_path)
    back = load_policy(ckpt)
    assert [p.kind for p in back.record.plans] == [p.kind for p in handle.record.plans]
    assert sum(p.numel() for p in back.module.parameters()) == sum(
        p.numel() for p in handle.module.parameters()
    )
    assert torch.equal(actions(back.module), actions(lerobot_load(ckpt)))
    assert not torch.equal(actions(back.module), actions(handle.module))  # lerobot-train changed it


def test_async_inference_server_accepts_and_loads_the_pruned_types(fresh, tmp_path, monkeypatch):
    """lerobot's policy server checks the type against SUPPORTED_POLICIES, then calls
    get_policy_class(type).from_pretrained(path) with no config: both work for the plugin's types."""
    pytest.importorskip("grpc")
    monkeypatch.chdir(tmp_path)  # the server module opens a log file under ./logs when imported
    import lerobot_policy_vlaprune  # noqa: F401
    from lerobot.async_inference import policy_server
    from lerobot.policies.factory import get_policy_class

    handle = wrap(fresh("pi05"))
    handle.drop_blocks({"language": [1, 2]})
    out = handle.save(tmp_path / "ck")
    assert "vlaprune_pi05" in policy_server.SUPPORTED_POLICIES
    served = get_policy_class("vlaprune_pi05").from_pretrained(str(out))
    assert served.config.type == "vlaprune_pi05" and served.config.vlaprune["plans"]
    assert torch.equal(actions(served), actions(handle.module))
