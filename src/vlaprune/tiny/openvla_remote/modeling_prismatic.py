"""Tiny mirror of plain OpenVLA's `modeling_prismatic.py` (github openvla/openvla,
prismatic/extern/hf/modeling_prismatic.py, the remote code of openvla/openvla-7b), written from its structure,
not copied. The vision towers, projector and Llama are the OFT mirror's (vlaprune.tiny.oft_remote); what
differs is what plain OpenVLA does with them:

- forward(): patches inserted after <s>, the LLM runs causally on the whole sequence with the token embeddings
  as they are (no action slots, no extra modules); `labels` (prompt = -100) give the LM loss, shifted inside
  the LLM; `use_cache` returns the LLM's key/value cache; a one-token step with `past_key_values` runs the LLM
  alone (cached generation).
- predict_action(): the empty token appended after "Out:" when missing, `n` action tokens decoded greedily
  (OpenVLA: `generate(do_sample=False)`; here without a cache, one full forward per token), token ->
  bin -> [-1, 1] bin center, un-normalized with the unnorm key's q01 / q99 where `mask`.
"""

import numpy as np
import torch

from vlaprune.tiny.oft_remote.modeling_prismatic import (
    IGNORE_INDEX,
    PrismaticCausalLMOutputWithPast,
)
from vlaprune.tiny.oft_remote.modeling_prismatic import (
    PrismaticForConditionalGeneration as _Backbones,
)

from .configuration_prismatic import OpenVLAConfig, PrismaticConfig

EMPTY_TOKEN = "Ġ"  # the tiny byte-level tokenizer's trailing space (Llama-2: "▁", 29871)


class PrismaticForConditionalGeneration(_Backbones):
    config_class = PrismaticConfig

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        labels=None,
        *,
        past_key_values=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=True,
        **kwargs,
    ):
        use_cache = bool(use_cache) and not self.training
        if past_key_values is not None or pixel_values is None:  # cached generation / language only
            out = self.language_model(
                input_ids=input_ids,
                attention_mask=attention_mask if past_key_values is None else None,
                past_key_values=past_key_values,
                labels=labels,
                use_cache=use_cache,
                output_hidden_states=output_hidden_states,
            )
            return PrismaticCausalLMOutputWithPast(
                loss=out.loss,
                logits=out.logits,
                past_key_values=out.past_key_values,
                hidden_states=out.hidden_states,
            )
        patches = self.projector(self.vision_backbone(pixel_values))  # (B, P, D)
        embeds = self.get_input_embeddings()(input_ids)  # (B, T, D)
        mm_embeds = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
        mm_mask = None
        if attention_mask is not None:
            ones = torch.ones(patches.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
            mm_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        mm_labels = None
        if labels is not None:
            ignore = torch.full(patches.shape[:2], IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            mm_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        out = self.language_model(
            inputs_embeds=mm_embeds,
            attention_mask=mm_mask,
            labels=mm_labels,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        return PrismaticCausalLMOutputWithPast(
            loss=out.loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            projector_features=patches,
        )


class OpenVLAForActionPrediction(PrismaticForConditionalGeneration):
    config_class = OpenVLAConfig

    def __init__(self, config):
        super().__init__(config)
        self.norm_stats = config.norm_stats
        self.bins = np.linspace(-1, 1, config.n_action_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.vocab_size = self.config.text_config.vocab_size - self.config.pad_to_multiple_of

    @torch.no_grad()
    def predict_action(self, input_ids, pixel_values, empty_token_id, unnorm_key, n_tokens=7):
        """(1, T) prompt ids -> (n_tokens,) un-normalized action, as OpenVLA's predict_action."""
        if not torch.all(input_ids[:, -1] == empty_token_id):
            input_ids = torch.cat([input_ids, torch.full_like(input_ids[:, :1], empty_token_id)], dim=1)
        ids = input_ids
        for _ in range(n_tokens):
            logits = self(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values
            ).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        tokens = ids[0, -n_tokens:].cpu().numpy()
        idx = np.clip(self.vocab_size - tokens - 1, 0, self.bin_centers.shape[0] - 1)
        normalized = self.bin_centers[idx]
        stats = self.norm_stats[unnorm_key]["action"]
        mask = np.asarray(stats.get("mask", np.ones_like(stats["q01"], dtype=bool)))
        hi, lo = np.array(stats["q99"]), np.array(stats["q01"])
        return np.where(mask, 0.5 * (normalized + 1) * (hi - lo) + lo, normalized)
