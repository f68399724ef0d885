"""The generic adapter: stacks named by module path, including the OpenVLA / OpenVLA-OFT layout."""

import pytest
from torch import nn

from vlaprune.adapters import layout
from vlaprune.adapters.anatomy import anatomy
from vlaprune.adapters.paths import parse_stacks
from vlaprune.errors import VlapruneError
from vlaprune.tiny.hf import tiny_decoder_lm


def numel(module):
    return sum(p.numel() for p in module.parameters())


def vit_blocks(depth: int, dim: int = 16) -> nn.Module:
    m = nn.Module()
    m.blocks = nn.ModuleList(
        nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim, batch_first=True)
        for _ in range(depth)
    )
    return m


class PrismaticLike(nn.Module):
    """OpenVLA's module layout: Llama LLM, DINOv2 + SigLIP featurizers, an MLP projector."""

    def __init__(self):
        super().__init__()
        self.language_model = tiny_decoder_lm("llama", layers=3)
        self.vision_backbone = nn.Module()
        self.vision_backbone.featurizer = vit_blocks(4)
        self.vision_backbone.fused_featurizer = vit_blocks(2)
        self.projector = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))


class OFTHead(nn.Module):
    """OFT's L1 regression head layout: `model.mlp_resnet_blocks[i].ffn`."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.mlp_resnet_blocks = nn.ModuleList(
            nn.ModuleDict({"ffn": nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64))}) for _ in range(2)
        )


def test_openvla_preset_finds_every_stack():
    vla = PrismaticLike()
    lay = layout(vla, "openvla")
    assert {n: (s.component, len(s)) for n, s in lay.stacks.items()} == {
        "language": ("language", 3),
        "vision.dino": ("vision", 4),
        "vision.siglip": ("vision", 2),
    }
    assert lay.stacks["language"].blocks is vla.language_model.model.layers
    assert lay.stacks["language"].counters[0].owner is vla.language_model.config
    anat = anatomy(lay, flops=False)
    assert sum(s["params"] for s in anat["stacks"]) + anat["other"]["params"] == numel(vla)
    assert anat["stacks"][1]["params"] == numel(vla.vision_backbone.featurizer.blocks)


def test_oft_action_head_named_with_the_vla():
    pair = nn.ModuleDict({"vla": PrismaticLike(), "head": OFTHead()})
    lay = layout(pair, "language=vla.language_model.model.layers,action=head.model.mlp_resnet_blocks")
    assert {n: len(s) for n, s in lay.stacks.items()} == {"language": 3, "action": 2}
    assert lay.stacks["action"].component == "action"
    assert anatomy(lay, flops=False)["total_params"] == numel(pair)


def test_path_named_decoder_lm_counts_flops():
    model = tiny_decoder_lm("llama")
    anat = anatomy(layout(model, "language=model.layers"))
    assert anat["stacks"][0]["flops"] > 0 and anat["total_flops"] >= anat["stacks"][0]["flops"]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("language", "not NAME=PATH"),
        ("brain=model.layers", "not a component"),
        ("language=model.layers,language=model.layers", "twice"),
        ("", "empty"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(VlapruneError, match=match):
        parse_stacks(spec)


def test_path_that_is_not_a_module_list():
    model = tiny_decoder_lm("llama")
    with pytest.raises(VlapruneError, match="not a non-empty ModuleList"):
        layout(model, "language=model.norm")
    with pytest.raises(VlapruneError, match="no module at"):
        layout(model, "language=model.decoder.layers")


def test_preset_is_plain_spec():
    assert parse_stacks("openvla")["vision.siglip"] == "vision_backbone.fused_featurizer.blocks"


def test_sequential_blocks_are_a_stack():
    """timm's ViT keeps its blocks in an nn.Sequential (OpenVLA's vision towers)."""
    from vlaprune.tiny.vit import VisionTransformer

    vit = VisionTransformer(depth=3)
    lay = layout(vit, "vision=blocks")
    assert isinstance(lay.stacks["vision"].blocks, nn.Sequential) and len(lay.stacks["vision"]) == 3
    from vlaprune.adapters.hf.layout import find_stack_paths

    assert find_stack_paths(vit) == ["blocks"]


def test_openvla_preset_on_a_vla_and_head_pair():
    """`nn.ModuleDict(vla=vla, head=head)` with --stacks=openvla: paths get `vla.`, the head joins."""
    pair = nn.ModuleDict({"vla": PrismaticLike(), "head": OFTHead()})
    spec = parse_stacks("openvla", pair)
    assert spec["language"] == "vla.language_model.model.layers"
    assert spec["action"] == "head.model.mlp_resnet_blocks"
    lay = layout(pair, "openvla")
    assert {n: len(s) for n, s in lay.stacks.items()} == {
        "language": 3,
        "vision.dino": 4,
        "vision.siglip": 2,
        "action": 2,
    }
    assert lay.stacks["action"].single_branch == "ffn"
