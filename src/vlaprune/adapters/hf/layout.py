"""Adapter for any Hugging Face transformers model: its layer stacks are found automatically.

A stack is a ModuleList (or an nn.Sequential, as timm's ViT `blocks`) of >= 1 modules of one class whose
name ends in Layer / Block and which contain an attention submodule (e.g. LlamaForCausalLM `model.layers`,
SiglipModel `vision_model.encoder.layers` and `text_model.encoder.layers`). Stacks nested inside another
stack's blocks (MoE experts) are ignored. The component comes from the path: vision / visual / image / vit /
patch -> "vision", otherwise "language"; when several stacks share a component they are named
`component.<label>` after their path.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vlaprune.adapters.stack import Counter, Layout, Stack, make_stack

VISION_WORDS = re.compile(r"(^|[._])(vision|visual|image|img|vit|patch)", re.IGNORECASE)
BLOCK_CLASS = re.compile(r"(Layer|Block)$")


def _is_block_list(ml: nn.Module) -> bool:
    if not isinstance(ml, nn.ModuleList | nn.Sequential) or len(ml) == 0:  # Sequential: timm ViTs
        return False
    cls = type(ml[0])
    if any(type(b) is not cls for b in ml) or not BLOCK_CLASS.search(cls.__name__):
        return False
    return any(re.search("attn|attention", n, re.IGNORECASE) for n, _ in ml[0].named_modules())


def find_stack_paths(model: nn.Module) -> list[str]:
    """Dotted paths of the outermost block ModuleLists in `model`, in registration order."""
    found: list[str] = []
    for name, mod in model.named_modules():
        if _is_block_list(mod) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def _labels(paths: list[str]) -> list[str]:
    """For paths of one component: the first path segment in which they differ (encoder / decoder)."""
    split = [p.split(".") for p in paths]
    for i in range(max(map(len, split))):
        seg = [s[i] if i < len(s) else "" for s in split]
        if len(set(seg)) > 1:
            return [x or p.replace(".", "_") for x, p in zip(seg, paths)]
    return [p.replace(".", "_") for p in paths]


def name_stacks(paths: list[str]) -> dict[str, str]:
    """Stack name -> path, using components from the path and labels where a component repeats."""
    comps = ["vision" if VISION_WORDS.search(p) else "language" for p in paths]
    names: dict[str, str] = {}
    for comp in dict.fromkeys(comps):
        group = [p for p, c in zip(paths, comps) if c == comp]
        labels = [""] if len(group) == 1 else _labels(group)
        for path, label in zip(group, labels):
            names[f"{comp}.{label}" if label else comp] = path
    return names


def config_counter(model: nn.Module, path: str) -> list[Counter]:
    """The `num_hidden_layers` of the config that owns the stack at `path` (nearest PreTrainedModel)."""
    parts = path.split(".")
    for i in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:i])) if i else model
        cfg = getattr(owner, "config", None)
        if (
            cfg is not None
            and hasattr(cfg, "num_hidden_layers")
            and cfg.num_hidden_layers == len(model.get_submodule(path))
        ):
            return [Counter(cfg, "num_hidden_layers", f"{'.'.join(parts[:i]) or 'model'}.config")]
    return []


def stacks_from_paths(model: nn.Module, names: dict[str, str]) -> dict[str, Stack]:
    out = {}
    for name, path in names.items():
        first = model.get_submodule(path)[0]
        idx_attr = "self_attn.layer_idx" if hasattr(getattr(first, "self_attn", None), "layer_idx") else None
        out[name] = make_stack(
            model, name, path, counters=config_counter(model, path), layer_idx_attr=idx_attr
        )
    return out


def example_forward(model: nn.Module):
    """A closure running one forward on example inputs built from the config, or None if unknown.

    Text: 32 token ids; images: one image of the config's image_size (Prismatic / OpenVLA: `image_sizes`, one
    per tower, the towers' images stacked on the channels). Covers decoder LMs, encoders, vision towers and
    dual encoders (SigLIP / CLIP)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None, ""
    gen = torch.Generator().manual_seed(0)
    kw, desc = {}, []
    text_cfg = getattr(cfg, "text_config", cfg)
    vision_cfg = getattr(cfg, "vision_config", cfg)
    if getattr(text_cfg, "vocab_size", None) and "input_ids" in _forward_args(model):
        n = min(32, getattr(text_cfg, "max_position_embeddings", 32) or 32)
        kw["input_ids"] = torch.randint(0, text_cfg.vocab_size, (1, n), generator=gen)
        desc.append(f"{n} tokens")
    sizes = getattr(vision_cfg, "image_sizes", None) or [getattr(vision_cfg, "image_size", None)]
    if sizes[0] and "pixel_values" in _forward_args(model):
        s, c = sizes[0], getattr(vision_cfg, "num_channels", 3) * len(sizes)
        kw["pixel_values"] = torch.rand(1, c, s, s, generator=gen)
        desc.append(f"one {s}x{s} image")
    if not kw:
        return None, ""
    device = next(model.parameters()).device
    kw = {k: v.to(device) for k, v in kw.items()}
    return (lambda: model(**kw)), f"forward (batch 1, {', '.join(desc)})"


def _forward_args(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def layout(model: nn.Module) -> Layout:
    paths = find_stack_paths(model)
    stacks = stacks_from_paths(model, name_stacks(paths))
    forward, desc = example_forward(model)
    expresses = {n for n, s in stacks.items() if s.counters}  # config.num_hidden_layers rebuilds the shape
    return Layout(
        family="hf",
        model=model,
        stacks=stacks,
        forward=forward,
        forward_desc=desc,
        training_forward=forward,
        config_expresses=expresses,
    )
