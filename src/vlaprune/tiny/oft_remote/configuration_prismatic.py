"""Tiny mirror of OpenVLA(-OFT)'s `configuration_prismatic.py` (remote code in the checkpoint folder).

As in OFT, the vision backbone id names the towers (here: tiny timm-shaped ViTs built by vlaprune.tiny.vit in
place of timm models) and `text_config` is a Llama config.
"""

from transformers import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING

# backbone id -> per tower (featurizer, fused_featurizer): ViT settings (OFT: timm model ids)
VISION_BACKBONES = {
    "tiny-dinosiglip-32px": [
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 4, "layer_scale": True},
        {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 4, "num_heads": 2, "class_token": False},
    ],
}


class PrismaticConfig(PretrainedConfig):
    model_type = "prismatic"
    is_composition = False

    def __init__(
        self,
        vision_backbone_id="tiny-dinosiglip-32px",
        llm_backbone_id="tiny-llama",
        arch_specifier="no-align+fused-gelu-mlp",
        use_fused_vision_backbone=True,
        image_resize_strategy="resize-naive",
        text_config=None,
        llm_max_length=256,
        pad_token_id=0,
        pad_to_multiple_of=64,
        output_projector_features=False,
        **kwargs,
    ):
        self.vision_backbone_id = vision_backbone_id
        self.llm_backbone_id = llm_backbone_id
        self.arch_specifier = arch_specifier
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.vit_kwargs = VISION_BACKBONES[vision_backbone_id]
        self.image_sizes = [v["img_size"] for v in self.vit_kwargs]
        self.timm_model_ids = [f"{vision_backbone_id}/{i}" for i in range(len(self.vit_kwargs))]
        self.image_resize_strategy = image_resize_strategy
        self.text_config = CONFIG_MAPPING["llama"](**(text_config or {}))
        self.llm_max_length = llm_max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.output_projector_features = output_projector_features
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def to_dict(self):
        out = super().to_dict()
        out.pop("vit_kwargs", None)
        out.pop("image_sizes", None)
        out.pop("timm_model_ids", None)
        return out


class OpenVLAConfig(PrismaticConfig):
    model_type = "openvla"

    def __init__(self, norm_stats=None, n_action_bins=256, **kwargs):
        self.norm_stats, self.n_action_bins = norm_stats, n_action_bins
        super().__init__(**kwargs)
