"""The family table: `FAMILIES[name] -> Family` (adapters/family.py), one entry per folder under adapters/.

Order matters twice: a loaded module belongs to the first family that owns it (SmolVLA and pi before other
lerobot policies), and a checkpoint folder is read by the first folder format that reads its config.json
(lerobot's "type", then OpenVLA's, then transformers').
"""

from __future__ import annotations

from torch import nn

from vlaprune.adapters import hf, lerobot, openvla, pi, smolvla
from vlaprune.adapters.family import Family, Folder

FAMILIES: dict[str, Family] = {
    f.name: f for f in (smolvla.FAMILY, pi.PI0, pi.PI05, lerobot.FAMILY, openvla.FAMILY, hf.FAMILY)
}
# folder formats by `Source.kind` (derived: several families share lerobot's)
FOLDERS: dict[str, Folder] = {f.folder.kind: f.folder for f in FAMILIES.values()}


def family_of(model: nn.Module) -> Family | None:
    """The table entry of `model` (lerobot policies without an adapter: the "lerobot" entry), or None."""
    return next((f for f in FAMILIES.values() if f.owns(model)), None)


def kind_of(model: nn.Module) -> str:
    """`Source.kind` of a loaded module: its family's folder format, else "transformers" for a model with a
    transformers config, else "module"."""
    fam = family_of(model)
    if fam is not None:
        return fam.folder.kind
    return "transformers" if hasattr(getattr(model, "config", None), "to_dict") else "module"
