"""Tiny lerobot pi0 / pi0.5 policies with random weights, built offline.

lerobot hard-codes the Gemma sizes (`get_gemma_config` knows gemma_2b / gemma_300m) and PaliGemma's vision
tower and vocabulary. `tiny_pi_factories` swaps the three module-level factories that build them while the
policy is constructed, so the classes are lerobot's own (PI0Policy / PI05Policy) at a tiny size.
Attention must keep 8 query heads: `compute_layer_complete` reshapes with a hard-coded 8.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from collections.abc import Iterator

import torch

from vlaprune.adapters.load import Source, remember
from vlaprune.tiny.hub import PALIGEMMA_TOKENIZER, write_paligemma_like_tokenizer
from vlaprune.tiny.weights import make_nontrivial

TEXT = {  # paligemma_variant -> language stack; action_expert_variant -> expert stack
    "gemma_2b": dict(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=8),
    "gemma_300m": dict(width=48, depth=4, mlp_dim=96, num_heads=8, num_kv_heads=1, head_dim=8),
}
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16)
IMAGE_SIZE, VOCAB = 64, 512
KINDS = {"pi0": ("pi0", "PI0Policy", "PI0Config"), "pi05": ("pi05", "PI05Policy", "PI05Config")}


@contextlib.contextmanager
def tiny_pi_factories(kind: str = "pi0", depth: int = 4) -> Iterator[None]:
    """While active, lerobot's pi0/pi0.5 modules build tiny Gemma / PaliGemma models of `depth` layers."""
    mod = importlib.import_module(f"lerobot.policies.{KINDS[kind][0]}.modeling_{KINDS[kind][0]}")
    orig = mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM

    def get_config(variant):
        return mod.GemmaConfig(**{**TEXT[variant], "depth": depth})

    def vlm_factory(config):
        for k, v in VISION.items():
            setattr(config.vision_config, k, v)
        config.vision_config.projection_dim = config.text_config.hidden_size  # lerobot hard-codes 2048
        config.text_config.vocab_size = VOCAB
        config._vocab_size = VOCAB
        config.image_token_index = VOCAB - 1
        return orig[1](config=config)

    def expert_factory(config):
        config.vocab_size = VOCAB
        return orig[2](config=config)

    mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM = (
        get_config,
        vlm_factory,
        expert_factory,
    )
    try:
        yield
    finally:
        mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma, mod.PiGemmaForCausalLM = orig


def tiny_pi_config(kind: str = "pi0", *, state_dim: int = 4, action_dim: int = 4, chunk_size: int = 10):
    """A PI0Config / PI05Config with one 64x64 camera, small state/action and short token budget."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    pkg, _, cfg_name = KINDS[kind]
    cfg_cls = getattr(importlib.import_module(f"lerobot.policies.{pkg}.configuration_{pkg}"), cfg_name)
    return cfg_cls(
        image_resolution=(IMAGE_SIZE, IMAGE_SIZE),
        input_features={
            "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, IMAGE_SIZE, IMAGE_SIZE)),
            "observation.state": PolicyFeature(FeatureType.STATE, (state_dim,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        chunk_size=chunk_size,
        n_action_steps=min(5, chunk_size),
        max_state_dim=max(8, state_dim),
        max_action_dim=max(8, action_dim),
        tokenizer_max_length=16,
        num_inference_steps=3,
        device="cpu",
    )


def tiny_pi(kind: str = "pi0", seed: int = 0, depth: int = 4, config=None, **config_kw) -> torch.nn.Module:
    """A tiny random-weight `PI0Policy` or `PI05Policy` (~0.4 M parameters), in eval mode, with a local tiny
    tokenizer standing in for the PaliGemma one lerobot's processors hard-code. `config`: rebuild that
    (e.g. saved) configuration at the tiny size instead of the default one."""
    pkg, policy_name, _ = KINDS[kind]
    policy_cls = getattr(importlib.import_module(f"lerobot.policies.{pkg}.modeling_{pkg}"), policy_name)
    torch.manual_seed(seed)
    with tiny_pi_factories(kind, depth):
        policy = policy_cls(config if config is not None else tiny_pi_config(kind, **config_kw))
    tok = write_paligemma_like_tokenizer(tempfile.mkdtemp(prefix="vlaprune-tok-"))
    source = Source(
        make_nontrivial(policy, seed).eval(),
        "lerobot",
        builder={"name": f"tiny:{kind}", "depth": depth},
        tokenizers={PALIGEMMA_TOKENIZER: str(tok)},
    )
    return remember(source)  # vlaprune.adapters.load.source_of(policy) finds its builder and tokenizer
