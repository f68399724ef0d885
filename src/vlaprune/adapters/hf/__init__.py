"""Plain transformers models: stacks found by scanning for block lists (`layout.py`), folders read by
transformers (`load.py`)."""

from __future__ import annotations

from torch import nn

from vlaprune.adapters.family import Family, Folder
from vlaprune.adapters.hf import load
from vlaprune.adapters.hf.layout import find_stack_paths, layout

FOLDER = Folder(
    kind="transformers",
    reads=load.reads,
    load=load.load,
    base_record=load.base_record,
    rebuild=load.rebuild,
)


def owns(model: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel) and bool(find_stack_paths(model))


def language_model(model: nn.Module):
    if not hasattr(model, "get_output_embeddings"):
        return None, None, ("input_ids", "attention_mask")
    return getattr(model, "model", None), model.get_output_embeddings(), ("input_ids", "attention_mask")


FAMILY = Family("hf", owns, layout, folder=FOLDER, language_model=language_model)

__all__ = ["FAMILY", "FOLDER", "layout"]
