"""Pruned checkpoints that lerobot's own tools load: the format of the `lerobot_policy_vlaprune` plugin.

lerobot-train / lerobot-eval / lerobot-record / rollout import every installed distribution whose name
starts with `lerobot_policy_` (lerobot.utils.import_utils.register_third_party_plugins). vlaprune ships one,
`plugins/lerobot_policy_vlaprune` (installed by scripts/setup.sh), registering a policy type per family:

    smolvla -> vlaprune_smolvla,  pi0 -> vlaprune_pi0,  pi05 -> vlaprune_pi05

A cut the family's own config cannot express (SmolVLA vision drops, every pi0 / pi0.5 cut, keep-K/V and
sublayer drops, unit pruning) is saved as
    config.json        type "vlaprune_<family>", the family's config fields as the pruned model has them, and
                       `vlaprune`: the pruning record (format, base architecture, stack names, plans,
                       trained episodes)
    model.safetensors  the pruned weights (the name lerobot's tools and `save_pretrained` use)
    plan.json          the same record, for people and for vlaprune (weights: model.safetensors)
Loading (vlaprune's `load_pruned`, or the plugin's `from_pretrained` in lerobot's tools) rebuilds the base
architecture with random weights, replays the plans and loads the weights strictly: missing, unexpected or
mis-shaped tensors are refused in one line, never silently re-initialised. lerobot-train's checkpoints of
such a policy are again this format (its config carries the record), so vlaprune loads them back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.errors import VlapruneError

PLUGIN_TYPES = {"smolvla": "vlaprune_smolvla", "pi0": "vlaprune_pi0", "pi05": "vlaprune_pi05"}
FAMILY_OF = {v: k for k, v in PLUGIN_TYPES.items()}
WEIGHTS = "model.safetensors"
RECORD_KEY = "vlaprune"


def plugin_config_json(cfg: Any, family: str, record: dict[str, Any]) -> dict[str, Any]:
    """config.json of the plugin type: {"type": "vlaprune_<family>", **the family config's fields (as the
    pruned model has them), "vlaprune": record}. Written with draccus like lerobot's own configs; needs no
    plugin import (vlaprune writes and reads this format by itself)."""
    import draccus

    encoded = draccus.encode(cfg)
    encoded.pop("type", None)
    encoded.pop(RECORD_KEY, None)  # a config loaded from this format carries the record it was loaded with
    return {"type": PLUGIN_TYPES[family], **encoded, RECORD_KEY: record}


def write_plugin_checkpoint(model: nn.Module, family: str, record: dict[str, Any], folder: Path) -> None:
    """config.json + model.safetensors of the plugin format into `folder` (the caller writes plan.json)."""
    from safetensors.torch import save_model

    cfg = plugin_config_json(model.config, family, record)
    (folder / "config.json").write_text(json.dumps(cfg, indent=4) + "\n")
    save_model(model, str(folder / WEIGHTS))


def record_from_config(folder: Path) -> dict[str, Any] | None:
    """The pruning record in a plugin-format config.json (a folder lerobot-train wrote has no plan.json);
    None when config.json is not of a vlaprune type. A vlaprune type whose family this vlaprune does not
    know, or a missing / broken record, is refused."""
    file = folder / "config.json"
    if not file.is_file():
        return None
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        msg = f"{file} is not valid JSON ({e.msg}, line {e.lineno}); re-save the checkpoint"
        raise VlapruneError(msg) from None
    kind = cfg.get("type")
    if not isinstance(kind, str) or not kind.startswith("vlaprune_"):
        return None
    if kind not in FAMILY_OF:
        raise VlapruneError(
            f"{file}: policy type {kind!r} is not one this vlaprune knows ({', '.join(FAMILY_OF)}); upgrade "
            "vlaprune or load it with the vlaprune that wrote it"
        )
    record = cfg.get(RECORD_KEY)
    if not isinstance(record, dict) or "base" not in record or "plans" not in record:
        raise VlapruneError(
            f"{file}: the {RECORD_KEY!r} pruning record is missing or incomplete, so the pruned architecture "
            "cannot be rebuilt; restore config.json from the checkpoint vlaprune wrote"
        )
    return {**record, "weights": WEIGHTS}


def swap_config(model: nn.Module, config: Any) -> None:
    """Make `config` the config of `model` and of every submodule that shared the old one (lerobot's policies
    hand one config object to their inner model), so CLI overrides (device, n_action_steps, ...) reach all."""
    old = model.config
    for m in model.modules():
        if getattr(m, "config", None) is old:
            m.config = config


def check_structure(model: nn.Module, config: Any) -> None:
    """The loaded config must describe the architecture the plans produced: every field it shares with the
    rebuilt model's config and that the surgery changed (layer counters) must agree."""
    old = model.config
    for f in dataclasses.fields(old):
        if f.name.startswith("num_") and f.name.endswith("_layers") and hasattr(config, f.name):
            if getattr(config, f.name) != getattr(old, f.name):
                raise VlapruneError(
                    f"config.json says {f.name}={getattr(config, f.name)} but the recorded cuts give "
                    f"{getattr(old, f.name)}; the config was edited: restore it from the checkpoint"
                )


def load_plugin_policy(
    cls: type, pretrained_name_or_path: str | Path, config: Any = None, revision: str | None = None
) -> nn.Module:
    """What the plugin's `from_pretrained` returns: the pruned policy (vlaprune's `load_pruned`), with
    `config` (lerobot's, CLI overrides included) as its config everywhere, of class `cls` (the plugin's
    subclass of the family policy, so lerobot's name-based lookups find the plugin type), on
    `config.device`, in eval mode."""
    from vlaprune.surgery.checkpoint import load_pruned

    folder = Path(pretrained_name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(pretrained_name_or_path), revision=revision))
    source, _ = load_pruned(folder)
    policy = source.module
    if config is None:
        from lerobot.configs.policies import PreTrainedConfig

        config = PreTrainedConfig.from_pretrained(folder)
    check_structure(policy, config)
    swap_config(policy, config)
    policy.__class__ = cls
    if getattr(config, "device", None):
        policy.to(config.device)
    return policy.eval()
