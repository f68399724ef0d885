"""Adapter for lerobot's pi0 and pi0.5 (`PI0Policy`, `PI05Policy`).

Stacks (lerobot 0.6.1):
  vision    model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers (SigLIP)
  language  model.paligemma_with_expert.paligemma.model.language_model.layers                 (Gemma)
  action    model.paligemma_with_expert.gemma_expert.model.layers                             (Gemma expert)
Coupling: lockstep. The VLM and expert stacks are zipped with strict=True and every layer is one joint
attention over [prefix; suffix], so both stacks keep the same depth: removing block i removes it from both.
Keep-K/V: a language block can go while its keys / values stay for the expert (`pi/keep_kv.py`); the expert
keeps all its blocks and both stacks keep their depth.
Action-only: an expert block can go alone (`adapters.skipped`): the expert's tokens skip that layer, every
language block stays (the VLM still computes the K/V later expert blocks read), both stacks keep their depth.
"""

from __future__ import annotations

from torch import nn

from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.adapters.lerobot.batch import inference_pass, training_pass
from vlaprune.adapters.pi import keep_kv as keep_kv_pi
from vlaprune.adapters.skipped import is_skipped
from vlaprune.adapters.stack import Counter, Coupling, KeepKV, Layout, SkipInPlace, make_stack

ROOT = "model.paligemma_with_expert"
PALI = f"{ROOT}.paligemma.model"
PATHS = {
    "vision": f"{PALI}.vision_tower.vision_model.encoder.layers",
    "language": f"{PALI}.language_model.layers",
    "action": f"{ROOT}.gemma_expert.model.layers",
}
# VLA name -> VLM name (`vlaprune diverge`): google/paligemma-3b-pt-224 as stored on the hub, and a PaliGemma
# saved by transformers 5
VLM_MAP = [
    (f"{PALI}.language_model.", "language_model.model."),
    (f"{PALI}.vision_tower.", "vision_tower."),
    (f"{PALI}.multi_modal_projector.", "multi_modal_projector."),
    (f"{ROOT}.paligemma.lm_head.", "language_model.lm_head."),
]
VLM_MAP_TRANSFORMERS5 = [(f"{ROOT}.paligemma.", "")]
PARTS = {
    "vision": [
        f"{PALI}.vision_tower.vision_model.embeddings",
        f"{PALI}.vision_tower.vision_model.post_layernorm",
    ],
    "projector": [f"{PALI}.multi_modal_projector"],
    "language": [f"{PALI}.language_model.embed_tokens", f"{PALI}.language_model.norm"],
    "action": [
        f"{ROOT}.gemma_expert.model.norm",
        "model.state_proj",
        "model.action_in_proj",
        "model.action_out_proj",
        "model.action_time_mlp_in",
        "model.action_time_mlp_out",
        "model.time_mlp_in",
        "model.time_mlp_out",
    ],
}


def _stacks(policy: nn.Module) -> dict:
    """The vision, language and action stacks with the config counters surgery keeps in step; notes mark
    keep-K/V language blocks and skipped expert blocks."""
    pwe = policy.model.paligemma_with_expert
    pali_cfg = pwe.paligemma.config
    layers = pwe.paligemma.model.language_model.layers
    expert = pwe.gemma_expert.model.layers
    return {
        "vision": make_stack(
            policy,
            "vision",
            PATHS["vision"],
            counters=[Counter(pali_cfg.vision_config, "num_hidden_layers", "paligemma.config.vision_config")],
            exit=f"{PALI}.vision_tower.vision_model.post_layernorm",
        ),
        "language": make_stack(
            policy,
            "language",
            PATHS["language"],
            counters=[Counter(pali_cfg.text_config, "num_hidden_layers", "paligemma.config.text_config")],
            layer_idx_attr="self_attn.layer_idx",
            notes=["kv-only" if is_kv_only(b) else "" for b in layers]
            if any(map(is_kv_only, layers))
            else [],
            exit=f"{PALI}.language_model.norm",
        ),
        "action": make_stack(
            policy,
            "action",
            PATHS["action"],
            counters=[Counter(pwe.gemma_expert.config, "num_hidden_layers", "gemma_expert.config")],
            layer_idx_attr="self_attn.layer_idx",
            notes=["skipped" if is_skipped(b) else "" for b in expert]
            if any(map(is_skipped, expert))
            else [],
            exit=f"{ROOT}.gemma_expert.model.norm",
        ),
    }


def layout(policy: nn.Module) -> Layout:
    """pi0 / pi0.5's stacks, their lockstep coupling and their passes."""
    pwe = policy.model.paligemma_with_expert
    expert = pwe.gemma_expert.model.layers
    n = len(pwe.paligemma.model.language_model.layers)
    stacks = _stacks(policy)
    cfg = policy.config
    return Layout(
        family=cfg.type,
        model=policy,
        stacks=stacks,
        couplings=[
            Coupling(
                "lockstep",
                "language",
                "action",
                list(range(n)),
                "lockstep: language and action have the same depth; block i runs as one joint attention "
                "with action block i, so both are removed together",
            )
        ],
        parts=PARTS,
        forward=inference_pass(policy),
        training_forward=training_pass(policy),
        action_out="model.action_out_proj",
        noise="model",
        config_expresses=set(),
        # a language block is read by its expert partner unless an action-only drop removed that partner
        keep_kv={
            "language": KeepKV(
                "language", "action", [not is_skipped(b) for b in expert], lambda: keep_kv_pi.install(pwe)
            )
        },
        skip_in_place={"action": SkipInPlace("action", "language", lambda: keep_kv_pi.install(pwe))},
        forward_desc=f"predict_action_chunk (batch 1, {cfg.tokenizer_max_length} text tokens, "
        f"{cfg.num_inference_steps} denoising steps)",
    )
