"""Pruned checkpoints: the family's own format plus `plan.json`, weights only through safetensors.

    save_pruned(module, record, "out/pruned")        # config.json + weights + plan.json (+ processors)
    source, record = load_pruned("out/pruned")       # rebuild base, replay plans, load weights strictly

(`vlaprune.policy.load_policy` and `Loaded.save` call these; the record is the model's PruningRecord.)

Where the family's config can express the new shape (SmolVLA language / action drops in pair mode via
num_vlm_layers / num_expert_layers; transformers models via num_hidden_layers), the weights are
`model.safetensors` and the family's own `from_pretrained` loads the folder with no vlaprune code. Other cuts
of SmolVLA / pi0 / pi0.5 are saved as a type of vlaprune's lerobot plugin (`surgery/plugin.py`): lerobot's
tools load them through it, and lerobot-train's checkpoints of them carry the record in config.json. Only
path-named models keep `pruned_model.safetensors` with a `vlaprune_pruned` key in config.json (their family
loader then fails loudly instead of re-creating the removed layers with random weights). Loading refuses
missing and unexpected keys.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from vlaprune import __version__
from vlaprune.adapters import FOLDERS, kind_of
from vlaprune.adapters import layout as find_layout
from vlaprune.adapters.load import Source, build, load_source
from vlaprune.atomic import atomic_dir
from vlaprune.errors import VlapruneError
from vlaprune.surgery.blocks import replay_blocks
from vlaprune.surgery.plan import BlockPlan, PruningRecord, WidthPlan, plan_from_dict, plan_to_dict
from vlaprune.surgery.plugin import PLUGIN_TYPES, record_from_config, write_plugin_checkpoint
from vlaprune.surgery.sublayers import replay_sublayers
from vlaprune.surgery.units import apply_units
from vlaprune.surgery.width import apply_width, resnet_of

FORMAT = "vlaprune-pruned/1"
OWN_WEIGHTS, PRUNED_WEIGHTS = "model.safetensors", "pruned_model.safetensors"
PRUNED_KEY = "vlaprune_pruned"
PRUNED_NOTE = (
    "blocks removed that this config cannot express: load with vlaprune.policy.load_policy, see plan.json"
)
PROCESSOR_GLOBS = ("policy_preprocessor*", "policy_postprocessor*")


def base_record(source: Source, stacks: str | None = None, trust_remote_code: bool = False) -> dict | None:
    """How to rebuild the unpruned architecture of a freshly loaded model (taken before any surgery, since
    surgery changes the config's counters); None when it cannot be rebuilt. Its family's folder format
    records it (lerobot: type + config; transformers: class + config, unless path-named; OpenVLA: the VLA's
    config and OFT's modules); else a model is rebuilt from its folder, with the trust flag it came with, or
    its builder."""
    fmt = FOLDERS.get(source.kind)
    rec = fmt.base_record(source, stacks, trust_remote_code) if fmt is not None else None
    if rec is not None:
        return rec
    if source.folder is not None:
        return {"kind": "source", "path": str(source.folder), "trust_remote_code": trust_remote_code}
    if source.builder:
        return {"kind": "builder", "builder": source.builder}
    return None


def save_pruned(
    model: nn.Module,
    record: PruningRecord,
    out_dir: str | Path,
    *,
    processors_from: str | Path | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write `model` with its PruningRecord to a new folder `out_dir` atomically (temp folder + rename).
    A record without plans (e.g. a recovered baseline) gives a checkpoint with no plans.

    extra_json: more files to write alongside, {file name: JSON-able object} (e.g. the cost report)."""
    out = Path(out_dir)
    _check_can_save(out, record)
    base = record.base
    lay = find_layout(model, record.stacks)
    fmt = FOLDERS.get(base["kind"])
    if fmt is not None and fmt.write is not None:  # the family writes its own layout (OpenVLA-OFT)
        return _save_own_layout(fmt, model, record, out, lay, source=processors_from, extra_json=extra_json)
    expressible = _config_expresses(record, lay)
    plugin = not expressible and not record.stacks and lay.family in PLUGIN_TYPES
    plan_json = _record_json(
        lay, model, record, OWN_WEIGHTS if expressible or plugin else PRUNED_WEIGHTS, expressible
    )
    plan_json["lerobot_type"] = (
        PLUGIN_TYPES[lay.family] if plugin else (base.get("type") if expressible else None)
    )
    with atomic_dir(out) as tmp:
        if plugin:  # lerobot's tools load it through the lerobot_policy_vlaprune plugin
            record_json = {k: v for k, v in plan_json.items() if k != "weights"}
            write_plugin_checkpoint(model, lay.family, json.loads(json.dumps(record_json, default=str)), tmp)
        else:
            _write_weights_and_config(model, tmp, base)
        if not expressible and not plugin:
            (tmp / OWN_WEIGHTS).rename(tmp / PRUNED_WEIGHTS)
            _mark_config(tmp / "config.json")
        if processors_from and Path(processors_from).is_dir():
            for pattern in PROCESSOR_GLOBS:
                for f in Path(processors_from).glob(pattern):
                    shutil.copy2(f, tmp / f.name)
        _write_json(tmp, plan_json, extra_json)
    return out


def _check_can_save(out: Path, record: PruningRecord) -> None:
    """Refuse a non-empty output folder and a model whose base architecture cannot be rebuilt."""
    if out.exists() and any(out.iterdir()):
        raise VlapruneError(f"{out} already exists and is not empty; choose a new --output_dir or remove it")
    if record.base is None:
        raise VlapruneError(
            "this model's base architecture cannot be rebuilt (no config and no source folder); load it "
            "from a checkpoint folder or a registered builder before pruning it"
        )


def _config_expresses(record: PruningRecord, lay) -> bool:
    """Can the family's own config describe the pruned shape, so its loader rebuilds it unaided? Only block
    drops from stacks the config counts do (`Layout.config_expresses`), on a model with a family config."""
    base = record.base
    dropped = {n for p in record.plans if isinstance(p, BlockPlan) for n, idx in p.drops.items() if idx}
    # per-layer widths (or added biases): no family config has them; masked units keep every shape
    unit_plans = any(
        p.kind == "width"
        or (
            p.kind == "units"
            and (p.removal == "real" or any(b.get("bias") for bl in p.units.values() for b in bl.values()))
        )
        for p in record.plans
    )
    # nor kv-only layers or skipped blocks (holes in a stack)
    kv_only = any(
        isinstance(p, BlockPlan) and (any(p.kv_only.values()) or any(p.skipped.values()))
        for p in record.plans
    )
    expressible = base["kind"] not in ("source", "builder") and dropped <= lay.config_expresses
    return expressible and not unit_plans and not kv_only and not base.get("builder")


def _write_json(folder: Path, plan_json: dict[str, Any], extra_json: dict[str, Any] | None) -> None:
    """plan.json and the extra {file name: object} JSON files."""
    (folder / "plan.json").write_text(json.dumps(plan_json, indent=2, default=str) + "\n")
    for name, obj in (extra_json or {}).items():
        (folder / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _record_json(lay, model: nn.Module, record: PruningRecord, weights: str, own: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "vlaprune_version": __version__,
        "family": lay.family,
        "model_class": type(model).__name__,
        "weights": weights,
        "family_loader_ok": own,
        "lerobot_type": None,
        "base": record.base,
        "stacks": record.stacks,
        "plans": [plan_to_dict(p) for p in record.plans],
        "trained_on": record.trained_on,
        "random_weights": random_weights(record),
    }


def random_weights(record: PruningRecord) -> bool:
    """Built by a tiny:NAME builder (random init: `policy.from_source` marks its base) and never trained by a
    vlaprune recovery?"""
    return bool((record.base or {}).get("random_weights")) and not record.trained_on


def _save_own_layout(fmt, model, record: PruningRecord, out: Path, lay, *, source, extra_json) -> Path:
    """The family's own layout (`Folder.write`; OFT's: `adapters.openvla.load.save`) + plan.json. OFT's
    loaders rebuild language drops (text_config.num_hidden_layers); vision drops (timm depth comes from
    the model id) and sublayer drops they cannot: then the VLA weights are named
    pruned_model.safetensors, so OFT's from_pretrained refuses the folder. Head cuts (blocks: OFT builds
    2; width: OFT builds hidden = LLM width) keep the VLA loadable and make OFT's strict head loading
    fail loudly by themselves."""
    vla_stacks = {n for n, s in lay.stacks.items() if s.component != "action"}
    touched: set[str] = set()  # VLA stacks cut in a way the VLA's config cannot express
    for p in record.plans:
        if isinstance(p, BlockPlan):
            cut = {n for n, idx in {**p.drops, **p.sublayers}.items() if idx}
            touched |= cut - (lay.config_expresses if p.part == "block" else set())
        else:
            touched |= {p.stack} if isinstance(p, WidthPlan) else set(p.units)
    vla_ok = not touched & vla_stacks
    own = vla_ok and not touched
    plan_json = _record_json(lay, model, record, OWN_WEIGHTS if vla_ok else PRUNED_WEIGHTS, own)
    with atomic_dir(out) as tmp:
        fmt.write(model, tmp, Path(source) if source else None, vla_ok)
        _write_json(tmp, plan_json, extra_json)
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
    if hasattr(model, "save_pretrained") and kind_of(model) in FOLDERS:  # lerobot's or transformers' own
        model.save_pretrained(str(folder))
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / OWN_WEIGHTS))
    if not (folder / OWN_WEIGHTS).is_file():
        raise VlapruneError(f"saving wrote no {OWN_WEIGHTS} (sharded checkpoints are not supported yet)")


def rebuild(base: dict[str, Any], folder: Path | None = None, trust_remote_code: bool = False) -> Source:
    """A fresh (random-weight) instance of the unpruned architecture a base record describes (its family's
    folder format rebuilds it; `folder`: the checkpoint's, for families that read model code from it)."""
    kind = base["kind"]
    if kind in FOLDERS:
        return FOLDERS[kind].rebuild(base, folder, trust_remote_code)
    if kind == "builder":
        b = dict(base["builder"])
        return build(b.pop("name"), **b)
    return load_source(base["path"], base.get("trust_remote_code", False))


def load_pruned(folder: str | Path, trust_remote_code: bool = False) -> tuple[Source, PruningRecord]:
    """Rebuild the base architecture, replay the plans, load the weights (strict): (the model in eval mode
    with where it came from, its PruningRecord). trust_remote_code: run model code the folder ships
    (OpenVLA); refused without it."""
    folder = Path(folder)
    saved = _read_record(folder)
    record = PruningRecord(
        base=saved["base"],
        stacks=saved.get("stacks"),
        plans=[plan_from_dict(p) for p in saved["plans"]],
        trained_on=saved.get("trained_on"),
    )
    source = rebuild(record.base, folder, trust_remote_code)
    model = source.module
    _replay(model, record)
    _load_weights(model, FOLDERS.get(record.base["kind"]), folder, saved["weights"])
    source.module, source.folder = model.eval(), folder
    source.kind = kind_of(model)
    return source, record


def _read_record(folder: Path) -> dict[str, Any]:
    """The saved pruning record (plan.json, else the plugin config.json's), checked: format, keys, weights."""
    plan_file = folder / "plan.json"
    saved = record_from_config(folder)  # the plugin format: config.json carries the record
    if plan_file.is_file():
        try:
            saved = json.loads(plan_file.read_text())
        except json.JSONDecodeError as e:
            raise VlapruneError(
                f"{plan_file} is not valid JSON ({e.msg}); restore it from the checkpoint"
            ) from None
    elif saved is None:
        raise VlapruneError(
            f"{folder} has no plan.json and no vlaprune policy type in config.json: not a vlaprune pruned "
            "checkpoint (use its family's loader)"
        )
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        got = saved.get("format") if isinstance(saved, dict) else None
        raise VlapruneError(f"{folder}: pruning record format {got!r}; this vlaprune reads {FORMAT}")
    missing = [k for k in ("base", "plans", "weights") if k not in saved]
    if missing:
        raise VlapruneError(
            f"{folder}: the pruning record lacks {', '.join(missing)}; restore plan.json from the checkpoint"
        )
    weights = folder / saved["weights"]
    if not weights.is_file():
        raise VlapruneError(f"{weights} is missing; the checkpoint is incomplete (re-save it)")
    return saved


def _replay(model: nn.Module, record: PruningRecord) -> None:
    """Apply the record's plans, in order, to the freshly rebuilt base model (shapes only, no weights)."""
    for plan in record.plans:
        if plan.kind == "width":
            apply_width(resnet_of(find_layout(model, record.stacks), plan.stack), plan.kept)
        elif plan.kind == "units":
            apply_units(find_layout(model, record.stacks), plan.units, plan.removal)
        elif plan.part != "block":
            replay_sublayers(model, plan, record.stacks)
        else:
            replay_blocks(model, plan, record.stacks)


def _load_weights(model: nn.Module, fmt, folder: Path, weights_name: str) -> None:
    """Load the saved weights strictly (missing / unexpected keys or shapes: one-line VlapruneError)."""
    from safetensors.torch import load_model

    weights = folder / weights_name
    try:
        if fmt is not None and fmt.load_weights is not None:  # the family's own files (OFT's head)
            fmt.load_weights(model, folder, weights_name)
        else:
            load_model(model, str(weights), strict=True)
    except VlapruneError:
        raise
    except Exception as e:  # missing / unexpected keys, shape mismatch, corrupt file
        msg = " ".join(str(e).split())[:300]
        raise VlapruneError(
            f"refusing {weights}: the weights do not match the pruned architecture ({msg})"
        ) from None
