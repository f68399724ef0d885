"""The transformers adapter finds layer stacks automatically and names their components."""

import pytest
import torch

from vlaprune.adapters import family, layout
from vlaprune.adapters.anatomy import anatomy
from vlaprune.adapters.hf.layout import name_stacks
from vlaprune.tiny.hf import tiny_decoder_lm, tiny_siglip


def numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decoder_lm(arch):
    model = tiny_decoder_lm(arch, layers=3)
    assert family(model) == "hf"
    lay = layout(model)
    assert list(lay.stacks) == ["language"]
    s = lay.stacks["language"]
    assert s.path == "model.layers" and len(s) == 3 and s.blocks is model.model.layers
    assert [(c.where, c.attr, getattr(c.owner, c.attr)) for c in s.counters] == [
        ("model.config", "num_hidden_layers", 3)
    ]
    assert s.layer_idx_attr == "self_attn.layer_idx"
    anat = anatomy(lay, flops=False)
    assert anat["stacks"][0]["params"] == numel(model.model.layers)
    assert anat["stacks"][0]["params"] + anat["other"]["params"] == numel(model)


def test_siglip_vision_and_text():
    model = tiny_siglip(layers=3)
    lay = layout(model)
    assert {n: (s.path, len(s)) for n, s in lay.stacks.items()} == {
        "language": ("text_model.encoder.layers", 2),
        "vision": ("vision_model.encoder.layers", 3),
    }
    anat = anatomy(lay, flops=False)
    assert sum(r["params"] for r in anat["stacks"]) + anat["other"]["params"] == numel(model)


def test_tied_embeddings_count_once():
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    anat = anatomy(layout(model), flops=False)
    assert anat["total_params"] == numel(model)  # parameters() yields a tied tensor once
    assert anat["stacks"][0]["params"] + anat["other"]["params"] == numel(model)


def test_repeated_components_get_labels():
    assert name_stacks(["encoder.block", "decoder.block"]) == {
        "language.encoder": "encoder.block",
        "language.decoder": "decoder.block",
    }
    assert name_stacks(
        [
            "vision_backbone.featurizer.blocks",
            "vision_backbone.fused_featurizer.blocks",
            "language_model.model.layers",
        ]
    ) == {
        "vision.featurizer": "vision_backbone.featurizer.blocks",
        "vision.fused_featurizer": "vision_backbone.fused_featurizer.blocks",
        "language": "language_model.model.layers",
    }


def test_model_without_stacks_is_unsupported():
    from vlaprune.errors import VlapruneError

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert family(model) is None
    with pytest.raises(VlapruneError, match="--stacks"):
        layout(model)
