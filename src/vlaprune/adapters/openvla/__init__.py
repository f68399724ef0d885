"""OpenVLA / OpenVLA-OFT: the VLA and the modules OFT keeps beside it as one policy (`policy.py`), OFT's
action head and projectors (`head.py`), its folders (`load.py`), its batch format (`batch.py`), its LIBERO
closed loop (`closed_loop.py`) and its fine-tuning recipe (`recipe.py`); plain OpenVLA's action tokens (loss
and decoding, `tokens.py`) and its LIBERO closed loop (`token_loop.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.adapters.family import DataFormat, Family, Folder, Recipe
from vlaprune.adapters.openvla import batch, load, recipe, tokens
from vlaprune.adapters.openvla.policy import OpenVLAPolicy, predict_actions
from vlaprune.adapters.openvla.policy import layout as oft_layout
from vlaprune.adapters.source import Source
from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError

VLM_MAP_OPENVLA = [("language_model.", "")]  # OpenVLA -> its Llama-2 (`vlaprune diverge`)


def owns(model: nn.Module) -> bool:
    return isinstance(model, OpenVLAPolicy)


def layout(policy: OpenVLAPolicy) -> Layout:
    """The OpenVLA(-OFT) layout; for plain OpenVLA its passes are one inference (prompt + 7 greedy action
    tokens) and its token loss, and its action output is the LM head."""
    lay = oft_layout(policy)
    if tokens.is_token_policy(policy):
        lay.forward = tokens.example_pass(policy, training=False)
        lay.training_forward = tokens.example_pass(policy, training=True)
        lay.forward_desc = "prompt + 7 greedy action tokens of plain OpenVLA (batch 1, 1 image)"
        lay.action_out = "vla.language_model.lm_head"
    return lay


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
    """OFT's LIBERO evaluation (`closed_loop.OFTLibero`) or, for plain OpenVLA, OpenVLA's
    (`token_loop.OpenVLALibero`); both map observations and actions themselves."""
    plain = tokens.is_token_policy(model)
    if env_type != "libero":
        name, whose = ("OpenVLA", "OpenVLA's") if plain else ("OpenVLA-OFT", "OFT's")
        raise VlapruneError(
            f"closed-loop {name} runs on LIBERO as {whose} own evaluation does (--env.type=libero), not "
            f"--env.type={env_type}"
        )
    if plain:
        from vlaprune.adapters.openvla.token_loop import OpenVLALibero

        return OpenVLALibero(model, task.partition("/")[0])
    from vlaprune.adapters.openvla.closed_loop import OFTLibero

    return OFTLibero(model, task.partition("/")[0])


def check_features(model: nn.Module, features: dict[str, Any]) -> None:
    """OFT's checks; plain OpenVLA's action must have the size of its statistics' actions."""
    batch.check_features(model, features)
    dims = tokens.action_dims(model) if tokens.is_token_policy(model) else set()
    shape = tuple(features["action"]["shape"]) if "action" in features else None
    if len(dims) == 1 and shape != (next(iter(dims)),):
        raise VlapruneError(
            f"feature 'action' has shape {shape} in the dataset but this OpenVLA's statistics have "
            f"{next(iter(dims))}-D actions; the dataset does not match this checkpoint"
        )


def delta_timestamps(model: nn.Module, meta: Any) -> dict[str, list[float]]:
    """The action chunk each frame needs: OFT's chunk, or plain OpenVLA's single action."""
    return {"action": [0.0]} if tokens.is_token_policy(model) else batch.delta_timestamps(model, meta.fps)


def loss(model: nn.Module, b: dict) -> Any:
    return (tokens.token_loss(model, b) if tokens.is_token_policy(model) else model.forward(b))[0]


def predict(model: nn.Module, b: dict) -> tuple[Any, Any]:
    fn = tokens.predict_actions if tokens.is_token_policy(model) else predict_actions
    return fn(model, b), b["actions"]


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
    takes=lambda m: owns(m) and (m.action_head is not None or tokens.is_token_policy(m)),
    check=check_features,
    delta_timestamps=delta_timestamps,
    processors=processors,
    loss=loss,
    predict=predict,
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
