"""Pruned OpenVLA-OFT checkpoints: OFT's own layout, loaded by OFT's own loaders where the cut is expressible
(language drops), refused by them where it is not, and strictly reloadable by vlaprune in every case."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlaprune.adapters.openvla.head import L1RegressionActionHead
from vlaprune.adapters.openvla.policy import example_batch, predict_actions
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy


def oft_own_load(folder):
    """What OFT's get_vla + get_action_head + get_proprio_projector do with a folder (OFT's code is not on
    PyPI: the mirror's remote code stands in for it). transformers 5 re-randomizes Prismatic's tensors after
    from_pretrained (OFT pins 4.40.1, which does not), so the VLA's file is loaded once more, strictly."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cfg = json.loads((folder / "config.json").read_text())
    cls = get_class_from_dynamic_module(cfg["auto_map"]["AutoModelForVision2Seq"], str(folder))
    vla = cls.from_pretrained(str(folder), trust_remote_code=True).eval()
    vla.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    d = vla.config.text_config.hidden_size
    head = L1RegressionActionHead(
        input_dim=d, hidden_dim=d, action_dim=7
    )  # OFT: hidden = LLM width, 2 blocks

    def component(name):
        sd = torch.load(next(folder.glob(f"{name}--*_checkpoint.pt")), weights_only=True)
        return {k.removeprefix("module."): v for k, v in sd.items()}

    head.load_state_dict(component("action_head"), strict=True)
    from vlaprune.adapters.openvla.head import ProprioProjector

    proprio = ProprioProjector(d, 8)
    proprio.load_state_dict(component("proprio_projector"), strict=True)
    return vla, head.eval(), proprio.eval()


def test_language_drop_saves_in_ofts_own_format(oft, tmp_path):
    oft.drop_blocks({"language": [1, 3]})
    batch = example_batch(oft.module, batch_size=2)
    expected = predict_actions(oft.module, batch)
    out = oft.save(tmp_path / "cut")
    assert (out / "model.safetensors").is_file() and not (out / "pruned_model.safetensors").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 2
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForVision2Seq"}
    assert json.loads((out / "plan.json").read_text())["family_loader_ok"] is True
    vla, head, proprio = oft_own_load(out)
    assert len(vla.language_model.model.layers) == 2
    prompt = batch["input_ids"][:, : -(8 * 7 + 1)]
    own = vla.predict_action(
        prompt,
        batch["pixel_values"],
        torch.ones_like(prompt, dtype=torch.bool),
        proprio=batch["proprio"],
        proprio_projector=proprio,
        action_head=head,
    )
    torch.testing.assert_close(own, expected, rtol=0, atol=0)
    again = load_policy(PolicyConfig(path=str(out), trust_remote_code=True))
    torch.testing.assert_close(predict_actions(again.module, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("request_", [{"vision.dino": [1, 3]}, {"action": [0]}])
def test_cuts_ofts_config_cannot_express_reload_through_vlaprune(oft, tmp_path, request_):
    oft.drop_blocks(request_)
    batch = example_batch(oft.module, batch_size=2)
    expected = oft.module(batch)[0]
    out = oft.save(tmp_path / "cut")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["family_loader_ok"] is False and plan["base"]["kind"] == "openvla"
    if "vision.dino" in request_:  # OFT's from_pretrained finds no model.safetensors: it fails loudly
        assert (out / "pruned_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    else:  # OFT builds its head with 2 blocks: strict loading of the 1-block head fails loudly
        with pytest.raises(RuntimeError, match="Missing key"):
            oft_own_load(out)
    again = load_policy(PolicyConfig(path=str(out), trust_remote_code=True))
    assert torch.equal(again.module(batch)[0], expected)
    assert {n: len(s) for n, s in again.layout().stacks.items()} == {
        n: len(s) for n, s in oft.layout().stacks.items()
    }


def test_reload_needs_the_trust_flag_and_matching_weights(oft, tmp_path):
    oft.drop_blocks({"language": [0]})
    out = oft.save(tmp_path / "cut")
    with pytest.raises(VlapruneError, match="trust_remote_code=true"):
        load_policy(PolicyConfig(path=str(out)))
    head = next(out.glob("action_head--*"))
    sd = torch.load(head, weights_only=True)
    sd.pop(next(iter(sd)))
    torch.save(sd, head)
    with pytest.raises(VlapruneError, match="does not fit"):
        load_policy(PolicyConfig(path=str(out), trust_remote_code=True))
