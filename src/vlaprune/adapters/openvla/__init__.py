"""OpenVLA / OpenVLA-OFT: the VLA and the modules OFT keeps beside it as one policy (`policy.py`), OFT's
action head and projectors (`head.py`), its folders (`load.py`), its batch format (`batch.py`), its LIBERO
closed loop (`closed_loop.py`) and its fine-tuning recipe (`recipe.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.adapters.family import DataFormat, Family, Folder, Recipe
from vlaprune.adapters.openvla import batch, load, recipe
from vlaprune.adapters.openvla.policy import OpenVLAPolicy, layout, predict_actions
from vlaprune.adapters.source import Source
from vlaprune.errors import VlapruneError

VLM_MAP_OPENVLA = [("language_model.", "")]  # OpenVLA -> its Llama-2 (`vlaprune diverge`)


def owns(model: nn.Module) -> bool:
    return isinstance(model, OpenVLAPolicy)


def base_record(source: Source, stacks: str | None = None, trust_remote_code: bool = False) -> dict:
    return load.base_record(source.module, trust_remote_code)


def rebuild(base: dict[str, Any], folder: Path | None, trust_remote_code: bool = False) -> Source:
    return Source(load.rebuild(base, folder, trust_remote_code), "openvla")


def processors(policy: Any, meta: Any) -> tuple[Any, Any]:
    """OFT's batch format from dataset frames (no postprocessor); none without a dataset (closed loop maps
    observations itself)."""
    if meta is None:
        return None, None
    return batch.preprocessor(policy.module, policy.folder, meta), None


def closed_loop(model: nn.Module, env_type: str, task: str) -> nn.Module:
    """OFT's LIBERO evaluation (`closed_loop.OFTLibero`), which maps observations and actions itself."""
    if env_type != "libero":
        raise VlapruneError(
            f"closed-loop OpenVLA-OFT runs on LIBERO as OFT's own evaluation does (--env.type=libero), not "
            f"--env.type={env_type}"
        )
    from vlaprune.adapters.openvla.closed_loop import OFTLibero

    return OFTLibero(model, task.partition("/")[0])


FOLDER = Folder(
    kind="openvla",
    reads=load.is_openvla,
    load=load.load,
    base_record=base_record,
    rebuild=rebuild,
    load_weights=load.load_weights,
    write=load.save,
    load_with_head=load.load_with_head,
)
DATA = DataFormat(
    takes=lambda m: owns(m) and m.action_head is not None,
    check=batch.check_features,
    delta_timestamps=lambda m, meta: batch.delta_timestamps(m, meta.fps),
    processors=processors,
    loss=lambda m, b: m.forward(b)[0],
    predict=lambda m, b: (predict_actions(m, b), b["actions"]),
)
FAMILY = Family(
    "openvla",
    owns,
    layout,
    folder=FOLDER,
    data=DATA,
    closed_loop=closed_loop,
    recipe=Recipe(lora=recipe.lora, optimizer=recipe.optimizer),
    vlm_maps={
        "openvla": VLM_MAP_OPENVLA,
        # an OpenVLA-OFT folder loaded as one policy (vla + action head) against the Prismatic VLM it started
        # from (same names without "vla."), or against the bare Llama-2 of its language model
        "oft": [("vla.", "")],
        "oft-llama": [("vla.language_model.", "")],
    },
)

__all__ = ["FAMILY", "OpenVLAPolicy", "layout"]
