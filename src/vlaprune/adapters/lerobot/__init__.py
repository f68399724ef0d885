"""What every lerobot policy shares: its folder format (`folder.py`), its batch format, processors, loss and
action prediction (`data.py`), example batches (`batch.py`). SmolVLA (smolvla/) and pi0 / pi0.5 (pi/) add
their stacks to these; any other lerobot policy (`FAMILY`) loads, trains and evaluates without an adapter."""

from __future__ import annotations

from vlaprune.adapters.family import Family, Folder
from vlaprune.adapters.lerobot import folder
from vlaprune.adapters.lerobot.data import DATA
from vlaprune.adapters.source import is_lerobot

FOLDER = Folder(
    kind="lerobot",
    reads=folder.reads,
    load=folder.load,
    base_record=folder.base_record,
    rebuild=folder.rebuild,
)


def family(name: str, **kw) -> Family:
    """A lerobot family whose policies have config.type == `name` (or the plugin's vlaprune_`name`)."""

    def owns(model) -> bool:
        return is_lerobot(model) and model.config.type.removeprefix("vlaprune_") == name

    return Family(name, owns, folder=FOLDER, data=DATA, **kw)


FAMILY = Family("lerobot", is_lerobot, layout=None, folder=FOLDER, data=DATA)

__all__ = ["DATA", "FAMILY", "FOLDER", "family"]
