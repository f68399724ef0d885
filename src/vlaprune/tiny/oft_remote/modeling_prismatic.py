"""Tiny mirror of OpenVLA-OFT's `modeling_prismatic.py` (remote code in the checkpoint folder), written from
its structure (github moojink/openvla-oft), not copied: what vlaprune relies on is the same.

- `vision_backbone.featurizer` (DINOv2) and `.fused_featurizer` (SigLIP): timm-shaped ViTs whose `blocks`
  are an nn.Sequential; their forward is bound when the model is built to
  `get_intermediate_layers(n={depth - 2})`, so the last block is computed but unused.
- `projector.fc1 / fc2 / fc3` (fused backbone MLP), `language_model`: a transformers LlamaForCausalLM.
- forward(): action positions from `labels` (the chunk * A tokens after the prompt), their input embeddings
  zeroed (L1) or replaced by projected noisy actions (diffusion); patches (+ proprio token, + diffusion
  timestep token) inserted after <s>; the LLM runs on the whole sequence and its hidden states come back.
- The action head and the proprio projector are NOT submodules: they are passed in (and saved) separately.
"""

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from vlaprune.tiny.vit import LayerScale, VisionTransformer  # stand in for timm's

from .configuration_prismatic import OpenVLAConfig, PrismaticConfig

# prismatic/vla/constants.py (LIBERO) for the tiny tokenizer: its last 256 ids are the action bins
IGNORE_INDEX = -100
ACTION_TOKEN_BEGIN_IDX = 98
STOP_INDEX = 3
NUM_ACTIONS_CHUNK = 8
ACTION_DIM = 7


def unpack_tuple(fn):
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        return result[0] if isinstance(result, tuple) else result

    return wrapper


def _ls_new_forward(self, x):
    return x * self.scale_factor


def ls_apply_patch(ls_module):
    ls_module.scale_factor = nn.Parameter(ls_module.gamma.clone())
    ls_module.forward = _ls_new_forward.__get__(ls_module, LayerScale)
    del ls_module.gamma


def get_current_action_mask(token_ids):
    seen = torch.cumsum(token_ids != IGNORE_INDEX, dim=1)
    return (1 <= seen) & (seen <= ACTION_DIM) & (token_ids > ACTION_TOKEN_BEGIN_IDX)


def get_next_actions_mask(token_ids):
    seen = torch.cumsum(token_ids != IGNORE_INDEX, dim=1)
    return (seen > ACTION_DIM) & (token_ids > ACTION_TOKEN_BEGIN_IDX)


class PrismaticVisionBackbone(nn.Module):
    def __init__(self, use_fused_vision_backbone, vit_kwargs):
        super().__init__()
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.num_images_in_input = 1
        self.featurizer = self._create_featurizer(vit_kwargs[0])
        self.embed_dim = self.featurizer.embed_dim
        if use_fused_vision_backbone:
            self.fused_featurizer = self._create_featurizer(vit_kwargs[1])
            self.embed_dim += self.fused_featurizer.embed_dim
        for module in self.modules():  # as OFT: transformers renames parameters called `gamma`
            if isinstance(module, LayerScale):
                ls_apply_patch(module)

    def _create_featurizer(self, kwargs):
        featurizer = VisionTransformer(**kwargs)
        featurizer.forward = unpack_tuple(
            partial(featurizer.get_intermediate_layers, n={len(featurizer.blocks) - 2})
        )
        return featurizer

    def get_num_patches(self):
        return self.featurizer.patch_embed.num_patches

    def get_num_images_in_input(self):
        return self.num_images_in_input

    def set_num_images_in_input(self, n):
        self.num_images_in_input = n

    def forward(self, pixel_values):
        if not self.use_fused_vision_backbone:
            return self.featurizer(pixel_values)
        patches = []
        for img in torch.split(pixel_values, [6] * self.num_images_in_input, dim=1):
            dino, siglip = torch.split(img, [3, 3], dim=1)
            patches.append(torch.cat([self.featurizer(dino), self.fused_featurizer(siglip)], dim=2))
        return torch.cat(patches, dim=1)


class PrismaticProjector(nn.Module):
    def __init__(self, use_fused_vision_backbone, vision_dim, llm_dim):
        super().__init__()
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1, self.act_fn2 = nn.GELU(), nn.GELU()

    def forward(self, patches):
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(patches)))))


@dataclass
class PrismaticCausalLMOutputWithPast(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: tuple | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    projector_features: torch.FloatTensor | None = None


class PrismaticPreTrainedModel(PreTrainedModel):
    config_class = PrismaticConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PrismaticProjector"]
    _supports_sdpa = True

    def _init_weights(self, module):
        # as OFT: in-place normal init (not meant for training from scratch)
        std = self.config.text_config.initializer_range
        if isinstance(module, nn.Linear | nn.Conv2d):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)


class PrismaticForConditionalGeneration(PrismaticPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.vision_backbone = PrismaticVisionBackbone(config.use_fused_vision_backbone, config.vit_kwargs)
        self.projector = PrismaticProjector(
            config.use_fused_vision_backbone, self.vision_backbone.embed_dim, config.text_config.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.vocab_size = config.text_config.vocab_size
        self.pad_token_id = config.pad_token_id
        self.llm_dim = config.text_config.hidden_size
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def get_decoder(self):
        return self.language_model.get_decoder()

    def _process_action_masks(self, labels):
        return get_current_action_mask(labels) | get_next_actions_mask(labels)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        labels=None,
        output_hidden_states=None,
        proprio=None,
        proprio_projector=None,
        noisy_actions=None,
        noisy_action_projector=None,
        diffusion_timestep_embeddings=None,
        use_cache=None,
        return_dict=True,
        **kwargs,
    ):
        if pixel_values is None:  # language-only forward
            out = self.language_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                output_hidden_states=output_hidden_states,
                use_cache=use_cache,
            )
            return PrismaticCausalLMOutputWithPast(
                loss=out.loss, logits=out.logits, hidden_states=out.hidden_states
            )
        embeds = self.get_input_embeddings()(input_ids)  # (B, T, D)
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)
        actions_mask = self._process_action_masks(labels)  # (B, T)
        patches = self.projector(self.vision_backbone(pixel_values))  # (B, P, D)
        if proprio_projector is not None and proprio is not None:
            token = proprio_projector(proprio.reshape(patches.shape[0], -1)).unsqueeze(1)
            patches = torch.cat([patches, token], dim=1)
        if diffusion_timestep_embeddings is not None:
            patches = torch.cat([patches, diffusion_timestep_embeddings], dim=1)
        if noisy_actions is not None:
            feats = noisy_action_projector(noisy_actions.reshape(noisy_actions.shape[0], -1).unsqueeze(-1))
            placed = torch.zeros_like(embeds)
            placed[actions_mask] = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
            embeds = torch.where(actions_mask.unsqueeze(-1), placed, embeds)
        else:
            embeds = embeds * ~actions_mask.unsqueeze(-1)
        mm_embeds = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
        mm_mask = None
        if attention_mask is not None:
            ones = torch.ones(patches.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
            mm_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        ignore = torch.full(patches.shape[:2], IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
        mm_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        out = self.language_model(
            inputs_embeds=mm_embeds,
            attention_mask=mm_mask,
            labels=mm_labels,
            output_hidden_states=output_hidden_states,
            use_cache=use_cache and not self.training,
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

    @torch.no_grad()
    def predict_action(
        self, input_ids, pixel_values, attention_mask, proprio=None, proprio_projector=None, action_head=None
    ):
        """Normalized actions (B, chunk, A) from the L1 head, as OFT's predict_action before un-normalizing:
        chunk * A placeholder action tokens and </s> appended to the prompt."""
        b, n_prompt = input_ids.shape
        n_act = NUM_ACTIONS_CHUNK * ACTION_DIM
        fill = torch.full(
            (b, n_act), ACTION_TOKEN_BEGIN_IDX + 1, dtype=input_ids.dtype, device=input_ids.device
        )
        stop = torch.full((b, 1), STOP_INDEX, dtype=input_ids.dtype, device=input_ids.device)
        ids = torch.cat([input_ids, fill, stop], dim=1)
        mask = torch.cat(
            [
                attention_mask,
                torch.ones_like(fill, dtype=attention_mask.dtype),
                torch.ones_like(stop, dtype=attention_mask.dtype),
            ],
            dim=1,
        )
        labels = torch.cat([torch.full_like(input_ids, IGNORE_INDEX), fill, stop], dim=1)
        out = self(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixel_values,
            labels=labels,
            output_hidden_states=True,
            proprio=proprio,
            proprio_projector=proprio_projector,
        )
        start = out.projector_features.shape[1] + n_prompt - 1  # the position before each action token
        hidden = out.hidden_states[-1][:, start : start + n_act]
        return action_head.model(hidden.reshape(b, NUM_ACTIONS_CHUNK, -1))
