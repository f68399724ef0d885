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
Loading (vlaprune's `load_pruned`, or the plugin's `from_pretrained` in lerobot's tools, which calls it and
then hands the policy lerobot's config) rebuilds the base
architecture with random weights, replays the plans and loads the weights strictly: missing, unexpected or
mis-shaped tensors are refused in one line, never silently re-initialised. lerobot-train's checkpoints of
such a policy are again this format (its config carries the record), so vlaprune loads them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.adapters import FAMILIES
from vlaprune.errors import VlapruneError

# family -> its plugin type (`Family.plugin_type`: smolvla, pi0, pi05)
PLUGIN_TYPES = {name: f.plugin_type for name, f in FAMILIES.items() if f.plugin_type}
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
