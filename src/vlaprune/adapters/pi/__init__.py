"""lerobot pi0 / pi0.5: PaliGemma and its Gemma action expert in lockstep (`layout.py`); the joint forward
that runs kv-only and skipped blocks (`keep_kv.py`). Folders, batches, processors: lerobot's."""

from __future__ import annotations

from vlaprune.adapters import lerobot
from vlaprune.adapters.lerobot.batch import TOKENS
from vlaprune.adapters.lerobot.data import mean_weights
from vlaprune.adapters.pi.layout import VLM_MAP, VLM_MAP_TRANSFORMERS5, layout


def language_model(model):
    pg = model.model.paligemma_with_expert.paligemma
    return pg.model.language_model, getattr(pg, "lm_head", None), TOKENS


def _family(name: str, maps: dict):
    return lerobot.family(
        name,
        layout=layout,
        language_model=language_model,
        example_weights=mean_weights,
        vlm_maps=maps,
        plugin_type=f"vlaprune_{name}",
        chunked=True,
    )


PI0 = _family("pi0", {"pi0": VLM_MAP, "pi0-transformers5": VLM_MAP_TRANSFORMERS5})
PI05 = _family("pi05", {"pi05": VLM_MAP})

__all__ = ["PI0", "PI05", "layout"]
