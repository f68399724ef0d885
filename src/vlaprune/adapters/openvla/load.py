"""OpenVLA / OpenVLA-OFT checkpoint folders: read one as an `OpenVLAPolicy`, write one in OFT's own layout.

    policy = load(folder, config_json, trust_remote_code=True)
    save(policy, out, source=folder, own_weights=True)      # config.json + model.safetensors + head files

Reading: the model class comes from the folder's remote code (`auto_map`; OFT maps only
`AutoModelForVision2Seq`, which transformers 5 no longer has, so the class is resolved directly) and runs only
with trust_remote_code. transformers 5 applies Prismatic's in-place `_init_weights` after loading and
re-randomizes already-loaded tensors without a warning, so every tensor is copied again from the
safetensors file(s), strictly (missing, unexpected or mis-shaped tensors are refused). The component files
(`action_head--<step>_checkpoint.pt`, `proprio_projector--...`, `noisy_action_projector--...`) load strictly
into `vlaprune.adapters.openvla.head` modules whose shapes are read from the files. A folder whose modeling
code is OFT's (its forward takes a proprio projector) needs its head file.

Writing (OFT's layout, what OFT's `get_vla` + `get_action_head` / `get_proprio_projector` read): the VLA's
`save_pretrained` (config.json with the new `text_config.num_hidden_layers`), the remote code, tokenizer,
processor and dataset statistics copied from the source folder, and each component as a DDP state dict
(`module.` keys) under its original file name.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.openvla.head import (
    DiffusionActionHead,
    L1RegressionActionHead,
    NoisyActionProjector,
    ProprioProjector,
    ddp_state_dict,
    head_from_state_dict,
    load_strict,
    projector_from_state_dict,
    read_component,
)
from vlaprune.adapters.openvla.policy import OpenVLAPolicy, chunk_for, head_kind
from vlaprune.adapters.source import remote_class
from vlaprune.errors import VlapruneError

COMPONENTS = ("action_head", "proprio_projector", "noisy_action_projector")
# files OFT's loaders read besides config.json and the weights
AUX_GLOBS = (
    "*.py",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
    "dataset_statistics.json",
    "generation_config.json",
)


def is_openvla(cfg: dict[str, Any]) -> bool:
    """Is this config.json an OpenVLA / Prismatic one?"""
    archs = " ".join(cfg.get("architectures") or [])
    return cfg.get("model_type") in ("openvla", "prismatic") or "OpenVLA" in archs or "Prismatic" in archs


def is_oft_code(folder: Path) -> bool:
    """Does the folder's modeling code take OFT's extra modules (so the action head is required)?"""
    code = folder / "modeling_prismatic.py"
    return code.is_file() and "proprio_projector" in code.read_text(errors="ignore")


def component_file(folder: Path, name: str) -> Path | None:
    files = sorted(folder.glob(f"{name}--*checkpoint.pt"))
    if len(files) > 1:
        raise VlapruneError(
            f"{folder} holds {len(files)} {name} files ({', '.join(f.name for f in files)}); keep only "
            "the one "
            "of the training step you want to load"
        )
    return files[0] if files else None


def weight_files(folder: Path, name: str = "model.safetensors") -> list[Path]:
    """The safetensors file(s) of the VLA: `name`, or the shards its `.index.json` lists."""
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name.removesuffix('.safetensors')}.safetensors.index.json"
    if index.is_file():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    raise VlapruneError(f"{folder} has no {name} (nor a sharded index); the checkpoint is incomplete")


@torch.no_grad()
def copy_weights(module: nn.Module, files: list[Path]) -> None:
    """Copy every tensor of `files` into `module`, strictly: same names, same shapes, nothing left out."""
    from safetensors import safe_open

    own = module.state_dict()
    seen: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118  (safe_open has no __iter__)
                if key not in own:
                    raise VlapruneError(f"refusing {f.name}: it has {key!r}, which the model does not")
                t = st.get_tensor(key)
                if t.shape != own[key].shape:
                    raise VlapruneError(
                        f"refusing {f.name}: {key} is {tuple(t.shape)} there and {tuple(own[key].shape)} in "
                        "the model (a pruned checkpoint? load it through its plan.json)"
                    )
                own[key].copy_(t)
                seen.add(key)
    missing = sorted(set(own) - seen)
    if missing:
        raise VlapruneError(f"refusing {files[0].name}: it lacks {len(missing)} tensors, e.g. {missing[0]}")


def load(folder: Path, cfg: dict[str, Any], trust_remote_code: bool) -> OpenVLAPolicy:
    """The VLA of `folder` with its component files, in eval mode (see the module docstring)."""
    cls = remote_class(folder, cfg, trust_remote_code)
    if is_oft_code(folder) and component_file(folder, "action_head") is None:
        raise VlapruneError(
            f"{folder} has OpenVLA-OFT's model code but no action_head--<step>_checkpoint.pt; copy the head "
            "file OFT saved beside this checkpoint into the folder"
        )
    from vlaprune.adapters.openvla.tokens import check_folder

    check_folder(folder, cfg, component_file(folder, "action_head") is not None)  # plain OpenVLA's statistics
    return attach(load_vla(folder, cls), folder)


def load_vla(folder: Path, cls: type) -> nn.Module:
    """The VLA alone (no component files), every tensor copied strictly from the folder's safetensors."""
    try:
        vla = cls.from_pretrained(str(folder), trust_remote_code=True)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise VlapruneError(f"transformers could not load {folder}: {type(e).__name__}: {first}") from None
    copy_weights(vla, weight_files(folder))
    return vla.eval()


def load_with_head(folder: Path, cfg: dict[str, Any], trust_remote_code: bool, kind: str) -> OpenVLAPolicy:
    """The VLA of a base OpenVLA folder with a freshly initialised OFT head of `kind` ("l1" / "diffusion")
    and proprio projector (`recipe.fresh_policy`). The folder must run OFT's modeling code, as finetune.py
    makes it (it copies OFT's modeling_prismatic.py into the base checkpoint before training)."""
    from vlaprune.adapters.openvla.recipe import HEADS, fresh_policy

    if kind not in HEADS:
        raise VlapruneError(f"--policy.oft_head={kind!r}; choose l1 or diffusion")
    cls = remote_class(folder, cfg, trust_remote_code)
    if not is_oft_code(folder):
        raise VlapruneError(
            f"--policy.oft_head needs OFT's model code in {folder} (its forward takes the head's inputs); "
            "copy OFT's prismatic/extern/hf/modeling_prismatic.py there, as OFT's finetune.py does"
        )
    if component_file(folder, "action_head") is not None:
        raise VlapruneError(
            f"{folder} already holds an OFT action head; drop --policy.oft_head to use it, or point "
            "--policy.path at the base OpenVLA"
        )
    vla = load_vla(folder, cls)
    return fresh_policy(vla, folder, kind, getattr(vla.config, "norm_stats", None) or _read_stats(folder))


def attach(vla: nn.Module, folder: Path) -> OpenVLAPolicy:
    """The policy of `vla` with the component files of `folder` (each strictly loaded, or None if absent)."""
    llm_dim = vla.config.text_config.hidden_size
    mods: dict[str, nn.Module | None] = {}
    for name in COMPONENTS:
        f = component_file(folder, name)
        if f is None:
            mods[name] = None
        elif name == "action_head":
            mods[name] = head_from_state_dict(read_component(f), llm_dim, f.name)
        else:
            mods[name] = projector_from_state_dict(read_component(f), f.name)
    head = component_file(folder, "action_head")
    step = head.name.split("--", 1)[1].removesuffix("_checkpoint.pt") if head else "0"
    stats = getattr(vla.config, "norm_stats", None) or _read_stats(folder)
    policy = OpenVLAPolicy(
        vla,
        **mods,  # action_head, proprio_projector, noisy_action_projector
        # OFT's chunk with its head; plain OpenVLA (action tokens) predicts one action per step
        chunk=chunk_for(stats) if mods["action_head"] is not None else 1,
        step=step,
    )
    policy.folder = folder  # its tokenizer, processor and statistics (closed loop)
    return policy.to(next(vla.parameters()).dtype).eval()


def _read_stats(folder: Path) -> dict | None:
    f = folder / "dataset_statistics.json"
    return json.loads(f.read_text()) if f.is_file() else None


def base_record(policy: OpenVLAPolicy, trust_remote_code: bool) -> dict[str, Any]:
    """What rebuilds the unpruned policy: the VLA's config and every component's shape."""
    comps: dict[str, Any] = {}
    head = policy.action_head
    if head is not None:
        resnet = head.noise_predictor.mlp_resnet if isinstance(head, DiffusionActionHead) else head.model
        comps["action_head"] = {
            "kind": head_kind(head),
            "hidden_dim": resnet.fc1.out_features,
            "action_dim": head.action_dim,
            "num_blocks": len(resnet.mlp_resnet_blocks),
        }
    if policy.proprio_projector is not None:
        comps["proprio_projector"] = {"proprio_dim": policy.proprio_projector.proprio_dim}
    if policy.noisy_action_projector is not None:
        comps["noisy_action_projector"] = {}
    return {
        "kind": "openvla",
        "config": policy.vla.config.to_dict(),
        "components": comps,
        "chunk": policy.chunk,
        "step": policy.step,
        "trust_remote_code": trust_remote_code,
    }


def rebuild(base: dict[str, Any], folder: Path, trust_remote_code: bool) -> OpenVLAPolicy:
    """A fresh (random-weight) unpruned policy from a base record, with the model code of `folder`."""
    cls = remote_class(folder, json.loads((folder / "config.json").read_text()), trust_remote_code)
    vla = cls(cls.config_class.from_dict(base["config"])).eval()
    d, comps = vla.config.text_config.hidden_size, base.get("components", {})
    head = comps.get("action_head")
    mods: dict[str, nn.Module | None] = {"action_head": None, "proprio_projector": None}
    if head:
        kind = DiffusionActionHead if head["kind"] == "diffusion" else L1RegressionActionHead
        mods["action_head"] = kind(d, head["hidden_dim"], head["action_dim"], head["num_blocks"])
    if "proprio_projector" in comps:
        mods["proprio_projector"] = ProprioProjector(d, comps["proprio_projector"]["proprio_dim"])
    noisy = NoisyActionProjector(d) if "noisy_action_projector" in comps else None
    policy = OpenVLAPolicy(
        vla,
        action_head=mods["action_head"],
        proprio_projector=mods["proprio_projector"],
        noisy_action_projector=noisy,
        chunk=base["chunk"],
        step=base["step"],
    )
    policy.folder = folder
    return policy.to(next(vla.parameters()).dtype).eval()


def load_weights(policy: OpenVLAPolicy, folder: Path, weights: str) -> None:
    """Load a saved policy's VLA weights (`weights`) and component files strictly into `policy`."""
    copy_weights(policy.vla, weight_files(folder, weights))
    for name in COMPONENTS:
        module, f = getattr(policy, name), component_file(folder, name)
        if (module is None) != (f is None):
            what = "lacks" if f is None else "has an unexpected"
            raise VlapruneError(f"{folder} {what} {name} file for this policy; the checkpoint is incomplete")
        if module is not None:
            load_strict(module, read_component(f), f.name)


def save(policy: OpenVLAPolicy, out: Path, source: Path | None, own_weights: bool) -> None:
    """Write `policy` into the (new, empty) folder `out` in OFT's layout; own_weights=False names the VLA
    weights `pruned_model.safetensors` so that OFT's loader refuses the folder instead of filling removed
    layers with random weights."""
    policy.vla.save_pretrained(str(out), max_shard_size="10000GB")
    if not own_weights:
        (out / "model.safetensors").rename(out / "pruned_model.safetensors")
    code = Path(sys.modules[type(policy.vla).__module__].__file__).parent  # where its remote code ran from
    for folder, patterns in ((source, AUX_GLOBS), (code, ("*.py",))):
        for f in (g for p in patterns for g in Path(folder).glob(p)) if folder is not None else ():
            if f.is_file() and f.name != "__init__.py" and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if source is not None and (source / "config.json").is_file():
        cfg["auto_map"] = json.loads((source / "config.json").read_text()).get(
            "auto_map", cfg.get("auto_map")
        )
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    for name in COMPONENTS:
        module = getattr(policy, name)
        if module is not None:
            torch.save(ddp_state_dict(module), out / f"{name}--{policy.step}_checkpoint.pt")
