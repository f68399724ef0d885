"""The OpenVLA / OpenVLA-OFT adapter on a tiny mirror of OFT's checkpoint (remote code, timm-style Sequential
vision blocks read at depth-2, Llama, a separately saved DDP head file, an auto_map with only
AutoModelForVision2Seq)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vlaprune.adapters.anatomy import anatomy
from vlaprune.adapters.openvla.policy import example_batch, predict_actions, vla_forward
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy
from vlaprune.scoring.gates import update_gates, virtual_gates


def test_folder_is_oft_shaped(oft_dir):
    cfg = json.loads((oft_dir / "config.json").read_text())
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForVision2Seq"}
    head = torch.load(next(oft_dir.glob("action_head--*_checkpoint.pt")), weights_only=True)
    assert all(k.startswith("module.model.") for k in head)


def test_loads_as_one_policy_with_every_stack(oft, oft_dir):
    lay = oft.layout()
    assert oft.family == "openvla" and lay.family == "openvla"
    assert {n: (s.path, len(s)) for n, s in lay.stacks.items()} == {
        "language": ("vla.language_model.model.layers", 4),
        "vision.dino": ("vla.vision_backbone.featurizer.blocks", 4),
        "vision.siglip": ("vla.vision_backbone.fused_featurizer.blocks", 4),
        "action": ("action_head.model.mlp_resnet_blocks", 2),
    }
    assert isinstance(lay.stacks["vision.dino"].blocks, nn.Sequential)
    assert lay.stacks["vision.dino"].readout.index == 2  # Prismatic reads block depth-2
    assert lay.stacks["language"].counters[0].owner is oft.module.vla.config.text_config
    # transformers 5 re-randomizes Prismatic's tensors after loading; the loader copies them back
    saved = load_file(str(oft_dir / "model.safetensors"))
    own = oft.module.vla.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())
    assert oft.module.proprio_projector is not None and oft.module.chunk == 8


def test_flops_reach_both_vision_towers_and_the_head(oft):
    anat = anatomy(oft.layout())
    flops = {s["name"]: s["block_flops"] for s in anat["stacks"]}
    assert all(f > 0 for f in flops["vision.dino"] + flops["vision.siglip"] + flops["action"])
    assert anat["total_params"] == sum(p.numel() for p in oft.module.parameters())


def test_loss_is_oft_l1_on_its_own_predictions(oft):
    """The action positions vlaprune reads equal the ones the model's own predict_action reads."""
    policy = oft.module
    batch = example_batch(policy, batch_size=2)
    loss, _ = policy(batch)
    prompt = batch["input_ids"][:, : -(policy.chunk * policy.action_dim + 1)]
    own = policy.vla.predict_action(
        prompt,
        batch["pixel_values"],
        torch.ones_like(prompt, dtype=torch.bool),
        proprio=batch["proprio"],
        proprio_projector=policy.proprio_projector,
        action_head=policy.action_head,
    )
    torch.testing.assert_close(predict_actions(policy, batch), own)
    torch.testing.assert_close(loss, nn.functional.l1_loss(own, batch["actions"]))


def test_llm_attends_bidirectionally_as_ofts_fork(oft):
    """OFT's transformers fork: every position attends to every non-padding position. A later token changes
    an earlier output, and the LLM equals the fork's rule computed by hand (the causal mask with padding,
    its last row repeated for every query) on a causal copy given that 4-D mask."""
    import copy

    policy = oft.module
    batch = example_batch(policy, batch_size=2)
    first = lambda b: vla_forward(policy, b).hidden_states[-1][:, 0]  # noqa: E731  (<s>, before the patches)
    with torch.no_grad():
        before = first(batch)
        changed = {**batch, "input_ids": batch["input_ids"].clone()}
        changed["input_ids"][:, -1] = 5  # the last token (</s>)
        assert not torch.allclose(first(changed), before)

    llm = policy.vla.language_model
    causal = copy.deepcopy(llm)
    causal.config.is_causal = True
    for m in causal.modules():
        if hasattr(m, "is_causal"):
            m.is_causal = True
    embeds = torch.randn(2, 12, llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False  # right padding, as OFT's collator pads
    fork = (torch.ones(12, 12, dtype=torch.bool).tril()[None] & mask[:, None, :])[:, -1:].expand(2, 12, 12)
    additive = torch.zeros(2, 1, 12, 12).masked_fill(~fork[:, None], torch.finfo(torch.float32).min)
    with torch.no_grad():
        ours = llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        ref = causal(inputs_embeds=embeds, attention_mask=additive, output_hidden_states=True).hidden_states[
            -1
        ]
        plain = causal(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(ours, ref)
    assert not torch.allclose(ours[:, :8], plain[:, :8])  # the causal model differs


def test_remote_code_needs_the_trust_flag(oft_dir):
    with pytest.raises(VlapruneError, match="trust_remote_code=true"):
        load_policy(PolicyConfig(path=str(oft_dir)))


def test_oft_folder_without_its_head_is_refused(oft_dir, tmp_path):
    bare = tmp_path / "no-head"
    shutil.copytree(oft_dir, bare)
    next(bare.glob("action_head--*")).unlink()
    with pytest.raises(VlapruneError, match="no action_head--<step>_checkpoint.pt"):
        load_policy(PolicyConfig(path=str(bare), trust_remote_code=True))


def test_gates_reach_head_blocks_and_the_unused_vision_block(oft):
    lay = oft.layout()
    batch = example_batch(oft.module, batch_size=2)
    base = oft.module(batch)[0]
    with update_gates(lay, None, 2) as gates:
        assert torch.equal(oft.module(batch)[0], base)  # a = 1: bit-identical
        loss = oft.module(batch)[0]
        loss.backward()
        grads = gates.grads()
    assert bool((grads[("action", 0)] != 0).all()) and bool((grads[("language", 1)] != 0).all())
    assert torch.equal(grads[("vision.dino", 3)], torch.zeros(2))  # computed, never read


@pytest.mark.parametrize("stack, block", [("vision.dino", 1), ("vision.siglip", 3), ("action", 1)])
def test_drop_equals_gate_at_zero(oft, stack, block):
    """A real drop is the model with that block's gate at 0: the read-out stays on the same block."""
    lay = oft.layout()
    batch = example_batch(oft.module, batch_size=2)
    with torch.no_grad(), virtual_gates(lay, [stack]) as gates:
        gates.set((stack, block), 0.0)
        gated = oft.module(batch)[0]
    oft.drop_blocks({stack: [block]})
    with torch.no_grad():
        torch.testing.assert_close(oft.module(batch)[0], gated)
    if stack.startswith("vision"):
        assert oft.layout().stacks[stack].readout.index == (1 if block < 2 else 2)


def test_dropping_the_read_out_block_is_refused(oft):
    with pytest.raises(VlapruneError, match="block 2 is the block the model reads"):
        oft.drop_blocks({"vision.dino": [2]})
    assert len(oft.layout().stacks["vision.dino"]) == 4  # nothing touched


def test_diffusion_head_loss_and_gates(tmp_path):
    """OFT's diffusion head: noise-prediction MSE with the timestep token and projected noisy actions."""
    from vlaprune.tiny.oft import write_tiny_oft

    folder = write_tiny_oft(tmp_path / "oft-diffusion", head="diffusion")
    policy = load_policy(PolicyConfig(path=str(folder), trust_remote_code=True))
    lay = policy.layout()
    assert lay.stacks["action"].path == "action_head.noise_predictor.mlp_resnet.mlp_resnet_blocks"
    assert policy.module.noisy_action_projector is not None
    batch = example_batch(policy.module, batch_size=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = policy.module(batch)[0]
    with update_gates(lay, ["action", "language"], 2) as gates:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            loss = policy.module(batch)[0]
        assert torch.equal(loss, base)
        loss.backward()
        assert bool((gates.grads()[("action", 1)] != 0).all())


def test_a_policy_built_in_python_saves_and_reloads(oft, tmp_path):
    """No folder behind it: the model code is taken from where its class was imported."""
    from vlaprune.adapters.openvla.policy import OpenVLAPolicy
    from vlaprune.policy import wrap

    built = OpenVLAPolicy(
        oft.module.vla,
        action_head=oft.module.action_head,
        proprio_projector=oft.module.proprio_projector,
        chunk=8,
    )
    handle = wrap(built)
    handle.drop_blocks({"language": [2]})
    batch = example_batch(built, batch_size=2)
    out = handle.save(tmp_path / "built")
    assert (out / "modeling_prismatic.py").is_file()
    again = load_policy(PolicyConfig(path=str(out), trust_remote_code=True))
    assert torch.equal(again.module(batch)[0], built(batch)[0])
