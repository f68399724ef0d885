"""Tiny lerobot SmolVLA policies with random weights, built offline.

SmolVLA reads its VLM's config and processor with `from_pretrained(vlm_model_name)`; a local folder works,
so `write_tiny_smolvlm` writes a small SmolVLM2 config + processor + tokenizer there first (~0.05 s).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlaprune.tiny.tokenizer import build_tokenizer

IMAGE_SIZE, PATCH, SCALE = 64, 16, 2
SMOLVLM_SPECIALS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
    "video_token": "<video>",
}


def write_tiny_smolvlm(
    out_dir: str | Path,
    *,
    text_layers: int = 4,
    text_hidden: int = 64,
    vision_layers: int = 2,
    vision_hidden: int = 32,
    patch: int = PATCH,
) -> Path:
    """Write a SmolVLM2-architecture config, image processor and tokenizer to `out_dir` (no weights)."""
    from transformers import SmolVLMConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = tuple(SMOLVLM_SPECIALS.values())
    tok = build_tokenizer(out, extra_special=SMOLVLM_SPECIALS, specials=specials)
    _processor(tok, patch).save_pretrained(str(out))
    head_dim = 16
    cfg = SmolVLMConfig(
        text_config=dict(
            model_type="llama",
            hidden_size=text_hidden,
            intermediate_size=2 * text_hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=text_hidden // head_dim,
            num_key_value_heads=max(1, text_hidden // head_dim // 2),
            head_dim=head_dim,
            vocab_size=len(tok),
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=patch,
        ),
        scale_factor=SCALE,
        image_token_id=tok.image_token_id,
        vocab_size=len(tok),
    )
    cfg.save_pretrained(str(out))
    return out


def _processor(tok, patch: int):
    """A SmolVLMProcessor for IMAGE_SIZE images, one tile each (no splitting), with `tok` as its tokenizer."""
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor

    image_proc = SmolVLMImageProcessor(
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=False,
    )
    try:
        from transformers import SmolVLMVideoProcessor

        video_proc = SmolVLMVideoProcessor()
    except Exception:  # video processing needs torchvision ops that a CPU torchvision may lack
        video_proc = None
    return SmolVLMProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        video_processor=video_proc,
        image_seq_len=(IMAGE_SIZE // patch) ** 2 // SCALE**2,
    )


def tiny_smolvla_config(
    vlm_dir: str | Path,
    *,
    state_dim: int = 4,
    action_dim: int = 4,
    cameras: tuple[str, ...] = ("top",),
    num_vlm_layers: int = 4,
    num_expert_layers: int = -1,
    self_attn_every_n_layers: int = 2,
    chunk_size: int = 10,
    n_action_steps: int = 5,
):
    """A SmolVLAConfig for a tiny VLM folder written by `write_tiny_smolvlm`, with features set."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    inputs = {
        f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, IMAGE_SIZE, IMAGE_SIZE))
        for c in cameras
    }
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    return SmolVLAConfig(
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        resize_imgs_with_padding=(IMAGE_SIZE, IMAGE_SIZE),
        num_vlm_layers=num_vlm_layers,
        num_expert_layers=num_expert_layers,
        self_attn_every_n_layers=self_attn_every_n_layers,
        chunk_size=chunk_size,
        n_action_steps=n_action_steps,
        max_state_dim=max(8, state_dim),
        max_action_dim=max(8, action_dim),
        tokenizer_max_length=16,
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        device="cpu",
    )


def tiny_smolvla(vlm_dir: str | Path, seed: int = 0, **config_kw):
    """A tiny random-weight `SmolVLAPolicy` (the class users load), ~0.5 M parameters, in eval mode."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from vlaprune.tiny.weights import make_nontrivial

    torch.manual_seed(seed)
    policy = SmolVLAPolicy(tiny_smolvla_config(vlm_dir, **config_kw))
    return make_nontrivial(policy, seed).eval()
