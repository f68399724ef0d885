"""Adapter for lerobot's SmolVLA (`SmolVLAPolicy`).

Stacks (lerobot 0.6.1):
  vision    model.vlm_with_expert.vlm.model.vision_model.encoder.layers   (SigLIP encoder layers)
  language  model.vlm_with_expert.vlm.model.text_model.layers             (first num_vlm_layers kept)
  action    model.vlm_with_expert.lm_expert.layers                        (action expert)
Coupling: the expert advances with the VLM. With m = num_vlm_layers // num_expert_layers, expert block j
runs with VLM block j*m; the other VLM blocks run alone. VLM block i is joint self-attention over
[prefix; actions] when i % self_attn_every_n_layers == 0, otherwise cross-attention in which the expert
attends to that VLM block's keys/values (those expert blocks' k/v projections take the VLM's KV width).
Keep-K/V: a VLM block with an expert partner can go while its keys / values stay (`smolvla/keep_kv.py`); it
keeps its index, so no block changes its attention kind.
Action-only: an expert block can go alone (`adapters.skipped`): it stays at its index as a pass-through, so
every VLM block stays and every other expert block keeps its partner and attention kind.
"""

from __future__ import annotations

from torch import nn

from vlaprune.adapters.keep_kv import is_kv_only
from vlaprune.adapters.lerobot.batch import inference_pass, training_pass
from vlaprune.adapters.skipped import is_skipped
from vlaprune.adapters.smolvla import keep_kv as keep_kv_smolvla
from vlaprune.adapters.stack import Counter, Coupling, KeepKV, Layout, SkipInPlace, make_stack

ROOT = "model.vlm_with_expert"
PATHS = {
    "vision": f"{ROOT}.vlm.model.vision_model.encoder.layers",
    "language": f"{ROOT}.vlm.model.text_model.layers",
    "action": f"{ROOT}.lm_expert.layers",
}
VLM_MAP = [(f"{ROOT}.vlm.", "")]  # VLA name -> SmolVLM2 name (`vlaprune diverge`)
PARTS = {
    "vision": [f"{ROOT}.vlm.model.vision_model.embeddings", f"{ROOT}.vlm.model.vision_model.post_layernorm"],
    "projector": [f"{ROOT}.vlm.model.connector"],
    "language": [f"{ROOT}.vlm.model.text_model.embed_tokens", f"{ROOT}.vlm.model.text_model.norm"],
    "action": [
        f"{ROOT}.lm_expert.norm",
        "model.state_proj",
        "model.action_in_proj",
        "model.action_out_proj",
        "model.action_time_mlp_in",
        "model.action_time_mlp_out",
    ],
}


def attention_kinds(n_blocks: int, every_n: int, mode: str) -> list[str]:
    """Per VLM block: "self-attn" (joint over prefix and actions) or "cross-attn" (expert reads VLM k/v)."""
    if "cross" not in mode:
        return ["self-attn"] * n_blocks
    return ["self-attn" if every_n > 0 and i % every_n == 0 else "cross-attn" for i in range(n_blocks)]


def _stacks(policy: nn.Module, lang_notes: list[str], action_notes: list[str]) -> dict:
    """The vision, language and action stacks with the config counters surgery keeps in step."""
    vwe = policy.model.vlm_with_expert
    vlm = vwe.vlm
    cfg = policy.config
    return {
        "vision": make_stack(
            policy,
            "vision",
            PATHS["vision"],
            counters=[Counter(vlm.config.vision_config, "num_hidden_layers", "vlm.config.vision_config")],
            exit=f"{ROOT}.vlm.model.vision_model.post_layernorm",
        ),
        "language": make_stack(
            policy,
            "language",
            PATHS["language"],
            counters=[
                Counter(cfg, "num_vlm_layers", "config.num_vlm_layers"),
                Counter(vwe, "num_vlm_layers", "model.vlm_with_expert.num_vlm_layers"),
                Counter(vlm.config.text_config, "num_hidden_layers", "vlm.config.text_config"),
            ],
            layer_idx_attr="self_attn.layer_idx",
            notes=lang_notes,
            exit=f"{ROOT}.vlm.model.text_model.norm",
        ),
        "action": make_stack(
            policy,
            "action",
            PATHS["action"],
            counters=[
                Counter(cfg, "num_expert_layers", "config.num_expert_layers"),
                Counter(vwe, "num_expert_layers", "model.vlm_with_expert.num_expert_layers"),
                Counter(vwe.lm_expert.config, "num_hidden_layers", "lm_expert.config"),
            ],
            layer_idx_attr="self_attn.layer_idx",
            notes=action_notes,
            exit=f"{ROOT}.lm_expert.norm",
        ),
    }


def layout(policy: nn.Module) -> Layout:
    """SmolVLA's stacks, their pairing (expert block j with VLM block j*m) and its passes."""
    vwe = policy.model.vlm_with_expert
    cfg = policy.config
    layers = vwe.get_vlm_model().text_model.layers
    n_vlm, n_exp = len(layers), len(vwe.lm_expert.layers)
    kinds = attention_kinds(n_vlm, vwe.self_attn_every_n_layers, vwe.attention_mode)
    m = n_vlm // n_exp
    period = vwe.self_attn_every_n_layers if "cross" in vwe.attention_mode else 0
    pairs = [j * m for j in range(n_exp)]
    # a VLM block is read by the expert when it has a partner that an action-only drop did not remove
    live = {p for p, b in zip(pairs, vwe.lm_expert.layers, strict=True) if not is_skipped(b)}
    read = [i in live for i in range(n_vlm)]
    lang_notes = [k + (" (kv-only)" if is_kv_only(b) else "") for k, b in zip(kinds, layers, strict=True)]
    action_notes = [
        f"with language {p} ({kinds[p]})" + (", skipped" if is_skipped(b) else "")
        for p, b in zip(pairs, vwe.lm_expert.layers, strict=True)
    ]
    stacks = _stacks(policy, lang_notes, action_notes)
    rule = (
        f"action block j runs with language block {m}*j ({n_exp} of {n_vlm} language blocks have a partner); "
        f"language block i is self-attn if i % {vwe.self_attn_every_n_layers} == 0, else cross-attn"
    )
    return Layout(
        family="smolvla",
        model=policy,
        stacks=stacks,
        couplings=[Coupling("paired", "language", "action", pairs, rule, period=period)],
        parts=PARTS,
        forward=inference_pass(policy),
        training_forward=training_pass(policy),
        action_out="model.action_out_proj",
        noise="model",
        config_expresses={"language", "action"},
        keep_kv={"language": KeepKV("language", "action", read, lambda: keep_kv_smolvla.install(vwe))},
        skip_in_place={"action": SkipInPlace("action", "language", lambda: keep_kv_smolvla.install(vwe))},
        forward_desc=f"predict_action_chunk (batch 1, {cfg.tokenizer_max_length} text tokens, "
        f"{cfg.num_steps} denoising steps)",
    )
