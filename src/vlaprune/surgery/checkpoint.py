"""Pruned checkpoints: the family's own format plus `plan.json`, weights only through safetensors.

    save_pruned(policy, plan, "out/pruned")          # config.json + weights + plan.json (+ processors)
    policy = vlaprune.surgery.load("out/pruned")     # rebuild base, replay plans, load weights strictly

Where the family's config can express the new shape (SmolVLA language / action drops via num_vlm_layers /
num_expert_layers; transformers models via num_hidden_layers), the weights are `model.safetensors` and the
family's own `from_pretrained` loads the folder with no vlaprune code. Otherwise (SmolVLA vision drops,
pi0 / pi0.5, path-named models) they are `pruned_model.safetensors` and config.json carries an extra
`vlaprune_pruned` key: lerobot's loader then fails loudly (unknown config field) instead of silently
re-creating the removed layers with random weights, and `load` is the way in. `load` refuses missing and
unexpected keys.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from vlaprune import __version__
from vlaprune.adapters import layout as find_layout
from vlaprune.atomic import atomic_dir
from vlaprune.errors import VlapruneError
from vlaprune.surgery.blocks import drop_blocks
from vlaprune.surgery.plan import Plan

FORMAT = "vlaprune-pruned/1"
OWN_WEIGHTS, PRUNED_WEIGHTS = "model.safetensors", "pruned_model.safetensors"
PRUNED_KEY = "vlaprune_pruned"
PRUNED_NOTE = (
    "blocks removed that this config cannot express: load with vlaprune.surgery.load(folder), see plan.json"
)
PROCESSOR_GLOBS = ("policy_preprocessor*", "policy_postprocessor*")


def base_record(model: nn.Module, source: str | None = None, stacks: str | None = None) -> dict[str, Any]:
    """How to rebuild the unpruned architecture (called before the first surgery)."""
    cfg = getattr(model, "config", None)
    if hasattr(cfg, "input_features") and hasattr(cfg, "type"):  # a lerobot policy
        import draccus

        rec = {"kind": "lerobot", "type": cfg.type, "config": draccus.encode(cfg)}
        if getattr(model, "vlaprune_tiny", None):
            rec["tiny"] = model.vlaprune_tiny
        return rec
    if hasattr(cfg, "to_dict") and not stacks:
        return {"kind": "transformers", "class": type(model).__name__, "config": cfg.to_dict()}
    if source is None:
        raise VlapruneError(
            "this model can only be rebuilt from its source; pass the checkpoint path it came from"
        )
    return {"kind": "source", "path": source, "stacks": stacks}


def remember_base(model: nn.Module, source: str | None = None, stacks: str | None = None) -> None:
    """Record the base architecture on the model once, before its first surgery."""
    if not hasattr(model, "vlaprune_base"):
        try:
            model.vlaprune_base = base_record(model, source, stacks)
        except VlapruneError:
            model.vlaprune_base = None


def save_pruned(
    model: nn.Module,
    plan: Plan,
    out_dir: str | Path,
    *,
    processors_from: str | Path | None = None,
    stacks: str | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write the (pruned) model to a new folder `out_dir` atomically (temp folder + rename). `plan` may be
    None for a model no surgery touched (a recovered baseline): the checkpoint then has no plans.

    extra_json: more files to write alongside, {file name: JSON-able object} (e.g. the cost report)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise VlapruneError(f"{out} already exists and is not empty; choose a new --output_dir or remove it")
    plans = list(getattr(model, "vlaprune_plans", None) or ([plan] if plan else []))
    base = getattr(model, "vlaprune_base", None)
    if base is None:
        raise VlapruneError("the model has no record of its base architecture; prune it with drop_blocks")
    lay = find_layout(model, stacks)
    dropped = {n for p in plans for n, idx in p.drops.items() if idx}
    unit_plans = any(p.kind == "units" for p in plans)  # per-layer widths: no family config expresses them
    expressible = base["kind"] != "source" and dropped <= lay.config_expresses and not unit_plans
    with atomic_dir(out) as tmp:
        _write_weights_and_config(model, tmp, base)
        if not expressible:
            (tmp / OWN_WEIGHTS).rename(tmp / PRUNED_WEIGHTS)
            _mark_config(tmp / "config.json")
        if processors_from and Path(processors_from).is_dir():
            for pattern in PROCESSOR_GLOBS:
                for f in Path(processors_from).glob(pattern):
                    shutil.copy2(f, tmp / f.name)
        record = {
            "format": FORMAT,
            "vlaprune_version": __version__,
            "family": lay.family,
            "model_class": type(model).__name__,
            "weights": OWN_WEIGHTS if expressible else PRUNED_WEIGHTS,
            "family_loader_ok": expressible,
            "base": base,
            "stacks": stacks,
            "plans": [p.to_dict() for p in plans],
        }
        (tmp / "plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return out


def _mark_config(config_file: Path) -> None:
    """Make the family's loader refuse the folder loudly: lerobot's draccus configs reject unknown keys (pi0 /
    pi0.5's `from_pretrained` would otherwise return random weights when the weights file is absent)."""
    if config_file.is_file():
        cfg = json.loads(config_file.read_text())
        if "type" in cfg:
            cfg[PRUNED_KEY] = PRUNED_NOTE
            config_file.write_text(json.dumps(cfg, indent=4) + "\n")


def _write_weights_and_config(model: nn.Module, folder: Path, base: dict) -> None:
    if hasattr(model, "save_pretrained") and base["kind"] in ("lerobot", "transformers"):
        model.save_pretrained(str(folder))
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / OWN_WEIGHTS))
    if not (folder / OWN_WEIGHTS).is_file():
        raise VlapruneError(f"saving wrote no {OWN_WEIGHTS} (sharded checkpoints are not supported yet)")


def _build_base(base: dict[str, Any]) -> nn.Module:
    kind = base["kind"]
    if kind == "lerobot":
        import draccus
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class

        cfg = draccus.decode(PreTrainedConfig, {"type": base["type"], **base["config"]})
        if hasattr(cfg, "load_vlm_weights"):
            cfg.load_vlm_weights = False  # every weight comes from the checkpoint
        cls = get_policy_class(base["type"])
        ctx = contextlib.nullcontext()
        if base.get("tiny"):
            from vlaprune.tiny.pi import tiny_pi_factories

            ctx = tiny_pi_factories(base["tiny"]["kind"], base["tiny"]["depth"])
        with ctx:
            model = cls(cfg)
        if base.get("tiny"):
            from vlaprune.tiny.hub import write_paligemma_like_tokenizer

            model.vlaprune_tiny = base["tiny"]
            model.vlaprune_tokenizer_dir = write_paligemma_like_tokenizer(
                tempfile.mkdtemp(prefix="vlaprune-tok-")
            )
        return model
    if kind == "transformers":
        import transformers

        cls = getattr(transformers, base["class"])
        return cls(cls.config_class.from_dict(base["config"]))
    from vlaprune.adapters.load import load_model

    return load_model(base["path"])


def load(folder: str | Path) -> nn.Module:
    """Rebuild the base architecture, replay the plans, load the weights (strict), return it in eval mode."""
    folder = Path(folder)
    plan_file = folder / "plan.json"
    if not plan_file.is_file():
        raise VlapruneError(
            f"{folder} has no plan.json: not a vlaprune pruned checkpoint (use its family's loader)"
        )
    record = json.loads(plan_file.read_text())
    if record.get("format") != FORMAT:
        raise VlapruneError(f"{plan_file} has format {record.get('format')!r}; this vlaprune reads {FORMAT}")
    weights = folder / record["weights"]
    if not weights.is_file():
        raise VlapruneError(f"{weights} is missing; the checkpoint is incomplete (re-save it)")
    model = _build_base(record["base"])
    model.vlaprune_base = record["base"]
    for p in record["plans"]:
        if p.get("kind") == "units":
            from vlaprune.surgery.units import apply_units

            apply_units(find_layout(model, record.get("stacks")), p["units"])
        else:
            drop_blocks(model, {n: idx for n, idx in p["drops"].items() if idx}, stacks=record.get("stacks"))
    model.vlaprune_plans = [Plan.from_dict(p) for p in record["plans"]]
    from safetensors.torch import load_model

    try:
        load_model(model, str(weights), strict=True)
    except Exception as e:  # missing / unexpected keys, shape mismatch, corrupt file
        msg = " ".join(str(e).split())[:300]
        raise VlapruneError(
            f"refusing {weights}: the weights do not match the pruned architecture ({msg})"
        ) from None
    return model.eval()
