"""Tiny Hugging Face transformers models with random weights: decoder LMs (Llama, Qwen2) and SigLIP."""

from __future__ import annotations

import torch

from vlaprune.tiny.weights import make_nontrivial


def tiny_decoder_lm(arch: str = "llama", seed: int = 0, layers: int = 4, hidden: int = 64):
    """A tiny `LlamaForCausalLM` or `Qwen2ForCausalLM` with grouped-query attention (4 q heads, 2 kv)."""
    import transformers

    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    cfg = cfg_cls(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return make_nontrivial(model_cls(cfg), seed).eval()


def tiny_siglip(seed: int = 0, layers: int = 3, hidden: int = 32):
    """A tiny `SiglipModel` (vision tower + text tower), 32x32 images with 8x8 patches."""
    import transformers

    cfg = transformers.SiglipConfig(
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers - 1,
            num_attention_heads=2,
            vocab_size=256,
            max_position_embeddings=16,
        ),
    )
    torch.manual_seed(seed)
    return make_nontrivial(transformers.SiglipModel(cfg), seed).eval()
