"""The family table's entry: what each model family gives the rest of vlaprune, as plain functions.

    fam = FAMILIES["smolvla"]                         # or adapters.family_of(module)
    fam.layout(module)                                # its stacks and couplings
    fam.folder.load(folder, config_json, trust)       # a checkpoint folder -> module
    fam.data.predict(module, batch)                   # (predicted, recorded) action chunks
    fam.closed_loop(module, env_type, task)           # its own observation / action mapping, or None

One folder per family under adapters/ fills one `Family` (lerobot SmolVLA: smolvla/; pi0 / pi0.5: pi/;
OpenVLA / OFT: openvla/; plain transformers: hf/; other lerobot policies: lerobot/, which SmolVLA and pi
share).
Nothing outside adapters/ tests a family: it asks this table (tests/test_families.py checks it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.source import Source
from vlaprune.adapters.stack import Layout


@dataclass(frozen=True)
class Folder:
    """How a family's checkpoint folders load and save (SmolVLA, pi0 and pi0.5 share lerobot's).

    kind: `Source.kind` of what it loads and the "kind" of its base records.
    reads: does this config.json belong to the format?
    load: (folder, config.json, trust_remote_code) -> the module, in eval mode.
    base_record: (source, --stacks spec, trust_remote_code) -> what rebuilds the unpruned architecture (JSON),
        or None (then the source folder or builder does).
    rebuild: (base record, checkpoint folder, trust_remote_code) -> a random-weight unpruned Source.
    load_weights: (module, folder, weights file name) -> None, strict; None: safetensors' strict load_model.
    load_with_head: (folder, config.json, trust_remote_code, head kind) -> the module with a freshly
        initialised action head of that kind (`--policy.oft_head`: OpenVLA + OFT's head); None: refused.
    write: (module, new folder, source folder | None, own_weights) -> None, the family's own layout; None: the
        module's `save_pretrained` (or safetensors' save_model) + config.json.
    """

    kind: str
    reads: Callable[[dict], bool]
    load: Callable[[Path, dict, bool], nn.Module]
    base_record: Callable[[Source, str | None, bool], dict | None]
    rebuild: Callable[[dict, Path | None, bool], Source]
    load_weights: Callable[[nn.Module, Path, str], None] | None = None
    write: Callable[[nn.Module, Path, Path | None, bool], None] | None = None
    load_with_head: Callable[[Path, dict, bool, str], nn.Module] | None = None


@dataclass(frozen=True)
class DataFormat:
    """How a family trains and is scored on LeRobotDataset frames.

    takes: does this module take dataset batches (OFT: only with its action head)?
    check: (module, dataset features) -> None; refuses datasets that do not fit.
    delta_timestamps: (module, dataset meta) -> lerobot's delta_timestamps (the action chunk it reads).
    processors: (policy handle: module, folder, config, tokenizers; dataset meta | None) -> (pre, post);
        pre maps frames to the family's batch format.
    loss: (module, batch) -> scalar training loss.
    predict: (module, batch) -> (predicted, recorded) action chunks, (B, chunk, A), normalized.
    """

    takes: Callable[[nn.Module], bool]
    check: Callable[[nn.Module, dict], None]
    delta_timestamps: Callable[[nn.Module, Any], dict]
    processors: Callable[[Any, Any], tuple[Any, Any]]
    loss: Callable[[nn.Module, dict], torch.Tensor]
    predict: Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Recipe:
    """A family's own fine-tuning recipe, where it is not lerobot's presets (OpenVLA-OFT: its finetune.py).

    lora: (module, rank | None for the recipe's own) -> the module to train: LoRA adapters where the recipe
        puts them, what it trains fully trainable, the rest frozen; forward(batch) -> (loss, metrics), and
        `merge_and_unload()` gives the plain module back with the adapters merged into its weights.
    optimizer: (trainable parameters, lr | None for the recipe's) -> (optimizer, LR scheduler stepped once
        per optimizer step); gradients are not clipped.
    """

    lora: Callable[[nn.Module, int | None], nn.Module]
    optimizer: Callable[[list, float | None], tuple[Any, Any]]


def own_loop_none(model: nn.Module, env_type: str, task: str) -> nn.Module | None:
    """No pipeline of its own: closed loop runs the policy through its processors."""
    return None


@dataclass(frozen=True)
class Family:
    """One model family.

    owns: is this loaded module of the family?
    layout: module -> Layout (its stacks, couplings, parts); None for families vlaprune cannot cut (other
        lerobot policies: they load, train and evaluate, but have no adapter).
    folder: its checkpoint folders (`Folder`). data: its batch format, loss and action prediction, or None.
    closed_loop: (module, env type, task) -> a module with lerobot's rollout interface that maps the env's
        observations and actions itself (OFT on LIBERO), or None (the policy and its processors); raises on
        envs it cannot run.
    language_model: module -> (text model, LM head | None, (token ids key, mask key)), for perplexity; None.
    example_weights: batch -> w (B,) with batch loss = sum_b w[b] * example b's loss (GateProbe), or None.
    vlm_maps: VLA -> base VLM tensor-name prefix rules (`vlaprune diverge --vlm_map`), by preset name.
    plugin_type: the lerobot_policy_vlaprune type its cuts are saved as when its config cannot say them.
    recipe: its own fine-tuning recipe (`Recipe`), or None (lerobot's presets).
    chunked: its select_action queues the first n_action_steps actions of `predict_action_chunk`, so closed
        loop may compute whole chunks and run them open loop per env (evaluate/schedule.py).
    inference: module -> a context manager in which the module runs vlaprune's faster inference code (the
        code its in-place cuts run; same actions up to the last bits), undone on exit; None: as loaded.
    """

    name: str
    owns: Callable[[nn.Module], bool]
    layout: Callable[[nn.Module], Layout] | None
    folder: Folder
    data: DataFormat | None = None
    closed_loop: Callable[[nn.Module, str, str], nn.Module | None] = own_loop_none
    language_model: Callable[[nn.Module], tuple[Any, Any, tuple[str, str]]] | None = None
    example_weights: Callable[[Any], torch.Tensor] | None = None
    vlm_maps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    plugin_type: str | None = None
    recipe: Recipe | None = None
    chunked: bool = False
    inference: Callable[[nn.Module], contextlib.AbstractContextManager] | None = None
