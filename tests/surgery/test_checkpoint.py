"""Pruned checkpoints: same actions after save -> load (family loader and vlaprune's); bad ones refused."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.surgery.conftest import actions, logits
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy, wrap


def load(folder):
    return load_policy(folder).module


def test_smolvla_language_drop_loads_with_lerobot_and_vlaprune(fresh, tmp_path):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    handle = wrap(fresh("smolvla"))
    policy = handle.module
    handle.drop_blocks({"language": [2, 3]}, mode="pair")  # keep-K/V drops need vlaprune's loader
    out = handle.save(tmp_path / "ckpt")
    record = json.loads((out / "plan.json").read_text())
    assert record["family_loader_ok"] and record["weights"] == "model.safetensors"
    assert json.loads((out / "config.json").read_text())["num_vlm_layers"] == 2
    expected = actions(policy)
    by_lerobot = SmolVLAPolicy.from_pretrained(out)  # no vlaprune code involved
    assert len(by_lerobot.model.vlm_with_expert.lm_expert.layers) == 2
    assert torch.equal(actions(by_lerobot), expected)
    assert torch.equal(actions(load(out)), expected)


@pytest.mark.parametrize(
    "kind, request_",
    [("smolvla", {"vision": [1]}), ("pi0", {"language": [0], "vision": [0]}), ("pi05", {"action": [3]})],
)
def test_unexpressible_shapes_load_through_the_plugin(kind, request_, fresh, tmp_path):
    """Cuts the family config cannot express are saved as the plugin's type: lerobot's factory resolves the
    type in config.json to the plugin class, which rebuilds, replays and loads strictly."""
    import lerobot_policy_vlaprune  # noqa: F401  (lerobot's tools import it at start)
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    handle = wrap(fresh(kind))
    policy = handle.module
    plan = handle.drop_blocks(request_)
    out = handle.save(tmp_path / "ckpt")
    record = json.loads((out / "plan.json").read_text())
    assert not record["family_loader_ok"] and record["lerobot_type"] == f"vlaprune_{kind}"
    assert (out / "model.safetensors").is_file() and not (out / "pruned_model.safetensors").exists()
    loaded = load(out)
    assert sum(p.numel() for p in loaded.parameters()) == plan.params_after
    assert torch.equal(actions(loaded), actions(policy))
    cfg = PreTrainedConfig.from_pretrained(out)
    assert cfg.type == f"vlaprune_{kind}" and cfg.vlaprune["plans"] == record["plans"]
    by_lerobot = get_policy_class(cfg.type).from_pretrained(out, config=cfg)
    assert type(by_lerobot).__name__.startswith("Vlaprune") and by_lerobot.config is cfg
    assert sum(p.numel() for p in by_lerobot.parameters()) == plan.params_after
    assert torch.equal(actions(by_lerobot), actions(policy))


def test_transformers_lm_loads_with_transformers_and_vlaprune(fresh, tmp_path):
    import transformers

    handle = wrap(fresh("qwen2"))
    lm = handle.module
    handle.drop_blocks({"language": [1]})
    out = handle.save(tmp_path / "lm")
    expected = logits(lm)
    assert torch.equal(logits(transformers.Qwen2ForCausalLM.from_pretrained(out)), expected)
    assert torch.equal(logits(load(out)), expected)


def test_no_pickles_and_plan_recorded(fresh, tmp_path):
    handle = wrap(fresh("pi0"))
    plan = handle.drop_blocks({"language": [1]})
    out = handle.save(tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "plan.json"]
    assert json.loads((out / "config.json").read_text())["type"] == "vlaprune_pi0"
    assert load_policy(out).record.plans[0].drops == plan.drops


def test_missing_layer_is_refused(fresh, tmp_path):
    handle = wrap(fresh("smolvla"))
    handle.drop_blocks({"language": [2, 3]}, mode="pair")
    out = handle.save(tmp_path / "c")
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    layer = "model.vlm_with_expert.vlm.model.text_model.layers.1."
    save_file({k: v for k, v in tensors.items() if not k.startswith(layer)}, weights)
    with pytest.raises(VlapruneError, match="do not match the pruned architecture.*text_model.layers.1"):
        load(out)


def test_extra_layer_is_refused(fresh, tmp_path):
    """A checkpoint holding more layers than its plan leaves (e.g. an unpruned file) is refused."""
    handle = wrap(fresh("pi0"))
    handle.drop_blocks({"language": [1]})
    out = handle.save(tmp_path / "c")
    full = fresh("pi0")
    from safetensors.torch import save_model

    save_model(full, str(out / "model.safetensors"))
    with pytest.raises(VlapruneError, match="do not match"):
        load(out)


def test_incomplete_or_foreign_folders_are_refused(fresh, tmp_path):
    handle = wrap(fresh("pi0"))
    handle.drop_blocks({"vision": [0]})
    out = handle.save(tmp_path / "c")
    (out / "model.safetensors").unlink()
    with pytest.raises(VlapruneError, match="is missing"):
        load(out)
    from vlaprune.surgery import load_pruned

    with pytest.raises(VlapruneError, match="no plan.json and no vlaprune policy type"):
        load_pruned(tmp_path)


def test_existing_output_is_not_overwritten(fresh, tmp_path):
    handle = wrap(fresh("pi0"))
    handle.drop_blocks({"vision": [0]})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(VlapruneError, match="not empty"):
        handle.save(tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temp folder left behind
