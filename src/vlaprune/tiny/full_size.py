"""Full-size lerobot SmolVLA / pi0 / pi0.5 with random weights, built offline: the real architectures at their
real sizes, for the full-scale benchmark (benchmarks/gateprobe_fullscale.py) and the `slow` tests.

  smolvla  SmolVLA on SmolVLM2-500M: the VLM config below is SmolVLM2-500M-Video-Instruct's (text: Llama,
           hidden 960, 32 layers of which SmolVLA keeps 16, 15 query / 5 KV heads of 64, MLP 2560, vocab
           49280; vision: SigLIP hidden 768, 12 layers, 12 heads, MLP 3072, patch 16, 512x512 images; pixel
           shuffle x4), the values transformers' SmolVLM / Idefics3 defaults and the public config give;
           SmolVLA's own defaults do the rest (16 VLM layers, expert at 0.75 width). ~450 M parameters.
  pi0/pi05 lerobot builds PaliGemma gemma_2b (18 layers) + the gemma_300m expert itself (its sizes are
           hard-coded; building the model needs no tokenizer). ~3.3 B parameters.
Batches come from `adapters.lerobot.batch.example_batch` (model-ready tensors; the SmolVLM tokenizer here is a
small stand-in whose ids fit the real vocabulary); nothing is downloaded.
Precision as lerobot runs them: SmolVLA in fp32 (a checkpoint loaded by `from_pretrained` is fp32; its
joint forward does not support a bf16 VLM beside the fp32 expert: the residual stream mixes dtypes, tried),
~1.8 GB; pi0 / pi0.5 with `dtype="bfloat16"` (lerobot's own selective bf16, vision path in fp32), ~7 GB.
Parameters are initialised in fp32 first (pi0: ~13 GB for a moment).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from vlaprune.tiny.smolvla import SMOLVLM_SPECIALS
from vlaprune.tiny.tokenizer import build_tokenizer

SMOLVLM2_500M_TEXT = dict(
    model_type="llama",
    hidden_size=960,
    intermediate_size=2560,
    num_hidden_layers=32,
    num_attention_heads=15,
    num_key_value_heads=5,
    head_dim=64,
    vocab_size=49280,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=False,
)
SMOLVLM2_500M_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=512,
    patch_size=16,
)
SCALE_FACTOR, IMAGE = 4, 512


def write_smolvlm2_500m(out_dir: str | Path) -> Path:
    """SmolVLM2-500M's config + an image processor at 512 px + a small tokenizer, into `out_dir`."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, extra_special=SMOLVLM_SPECIALS, specials=tuple(SMOLVLM_SPECIALS.values()))
    proc = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(
            size={"longest_edge": IMAGE}, max_image_size={"longest_edge": IMAGE}, do_image_splitting=False
        ),
        tokenizer=tok,
        video_processor=_video_processor(),
        image_seq_len=(IMAGE // 16) ** 2 // SCALE_FACTOR**2,
    )
    proc.save_pretrained(str(out))
    cfg = SmolVLMConfig(
        text_config={**SMOLVLM2_500M_TEXT, "pad_token_id": tok.pad_token_id},
        vision_config=SMOLVLM2_500M_VISION,
        scale_factor=SCALE_FACTOR,
        image_token_id=tok.image_token_id,
        vocab_size=SMOLVLM2_500M_TEXT["vocab_size"],
    )
    cfg.save_pretrained(str(out))
    return out


def _video_processor():
    try:
        from transformers import SmolVLMVideoProcessor

        return SmolVLMVideoProcessor()
    except Exception:  # needs torchvision ops a CPU torchvision may lack (as in tiny.smolvla)
        return None


def full_smolvla(vlm_dir: str | Path | None = None, seed: int = 0):
    """lerobot's SmolVLAPolicy at SmolVLM2-500M size (random weights, eval mode, 1 camera, state/action 6)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    vlm_dir = vlm_dir or write_smolvlm2_500m(tempfile.mkdtemp(prefix="smolvlm2-500m-"))
    cfg = SmolVLAConfig(
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        input_features={
            "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
            "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
    )
    torch.manual_seed(seed)
    return SmolVLAPolicy(cfg).eval()


def full_pi(kind: str = "pi0", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """lerobot's PI0Policy / PI05Policy at their real size (gemma_2b + gemma_300m), random weights, eval."""
    import importlib

    from lerobot.configs.types import FeatureType, PolicyFeature

    from vlaprune.tiny.pi import KINDS

    module, cls_name, cfg_name = KINDS[kind]
    conf = importlib.import_module(f"lerobot.policies.{module}.configuration_{module}")
    model = importlib.import_module(f"lerobot.policies.{module}.modeling_{module}")
    cfg = getattr(conf, cfg_name)(
        input_features={
            "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 224, 224)),
            "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
        dtype="bfloat16" if dtype == torch.bfloat16 else "float32",  # lerobot's own mixed precision
        device="cpu",
    )
    torch.manual_seed(seed)
    return getattr(model, cls_name)(cfg).eval()


def calibration_batches(policy, n: int = 1, size: int = 1) -> list[dict]:
    """n model-ready batches of `size` examples with an action chunk (`adapters.lerobot.batch.example_batch`
    plus seeded actions, nothing padded): what the benchmark and the slow tests calibrate on."""
    from vlaprune.adapters.lerobot.batch import example_batch

    cfg, out = policy.config, []
    device = next(policy.parameters()).device
    for i in range(n):
        b = example_batch(policy, size, seed=i)
        gen = torch.Generator().manual_seed(i)
        b["action"] = torch.randn(size, cfg.chunk_size, cfg.output_features["action"].shape[0], generator=gen)
        b["action"] = b["action"].to(device)
        b["action_is_pad"] = torch.zeros(size, cfg.chunk_size, dtype=torch.bool, device=device)
        out.append(b)
    return out
