"""lerobot SmolVLA: the VLM (SmolVLM2) and its action expert, coupled by pairs (`layout.py`); the joint
forward that runs kv-only and skipped blocks (`keep_kv.py`). Folders, batches, processors: lerobot's."""

from __future__ import annotations

from vlaprune.adapters import lerobot
from vlaprune.adapters.lerobot.batch import TOKENS
from vlaprune.adapters.lerobot.data import valid_step_weights
from vlaprune.adapters.smolvla.keep_kv import inference
from vlaprune.adapters.smolvla.layout import ROOT, VLM_MAP, layout


def language_model(model):
    vlm = model.model.vlm_with_expert.vlm
    return vlm.model.text_model, getattr(vlm, "lm_head", None), TOKENS


FAMILY = lerobot.family(
    "smolvla",
    layout=layout,
    language_model=language_model,
    example_weights=valid_step_weights,
    vlm_maps={"smolvla": VLM_MAP},
    plugin_type="vlaprune_smolvla",
    chunked=True,
    inference=inference,
)

__all__ = ["FAMILY", "ROOT", "layout"]
