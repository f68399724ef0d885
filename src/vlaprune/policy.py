"""The one policy handle: `load_policy(cfg) -> Loaded`, used by every stage and command.

    policy = load_policy("lerobot/smolvla_base")          # or a PolicyConfig; a folder; tiny:pi0; a hub id
    plan = policy.drop_blocks({"language": [3, 7]})         # surgery, recorded in policy.record
    policy.save("out/pruned")                               # family format + plan.json (+ processors)
    policy = load_policy("out/pruned")                      # rebuild base, replay plans, load strictly

`--policy.path` accepts a registered builder name (`tiny:smolvla`, `tiny:pi0`, ... once `vlaprune.tiny` is
imported, as the CLI does), a vlaprune pruned checkpoint folder (plan.json), a lerobot policy folder, a
transformers model folder, or a hub id (downloaded with huggingface_hub where the hub is reachable).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from vlaprune.adapters import DataFormat, family_of
from vlaprune.adapters import family as find_family
from vlaprune.adapters import layout as find_layout
from vlaprune.adapters.load import Source, is_lerobot, load_source, place, source_of
from vlaprune.adapters.stack import Layout
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.surgery.blocks import drop_blocks
from vlaprune.surgery.checkpoint import base_record, load_pruned, random_weights, save_pruned
from vlaprune.surgery.plan import BlockPlan, PruningRecord, UnitPlan, WidthPlan
from vlaprune.surgery.plugin import record_from_config
from vlaprune.surgery.sublayers import drop_sublayers
from vlaprune.surgery.units import prune_units
from vlaprune.surgery.width import shrink_width


@dataclass
class Loaded:
    """A loaded policy and everything later stages need to know about it.

    module: the nn.Module (in eval mode). path: what --policy.path named. folder: the local checkpoint
    folder (its processors and config live there), None for built models. stacks: the --stacks spec, if
    any. record: the pruning history (base architecture + plans), owned by surgery's checkpoint code.
    tokenizers: hub tokenizer id -> local folder, for processors that hard-code a hub tokenizer."""

    module: nn.Module
    path: str
    folder: Path | None = None
    stacks: str | None = None
    record: PruningRecord = field(default_factory=lambda: PruningRecord(base=None))
    tokenizers: dict[str, str] = field(default_factory=dict)
    trust_remote_code: bool = False

    @property
    def is_lerobot(self) -> bool:
        return is_lerobot(self.module)

    @property
    def data_format(self) -> DataFormat | None:
        """How its family meets LeRobotDataset frames (batch format, loss, action prediction), or None."""
        fam = family_of(self.module)
        return fam.data if fam is not None else None

    @property
    def takes_datasets(self) -> bool:
        """Does the policy train / score on LeRobotDataset batches (lerobot policies; OpenVLA-OFT with its
        head, through `adapters.openvla.batch`)?"""
        return self.data_format is not None and self.data_format.takes(self.module)

    @property
    def family(self) -> str:
        return "paths" if self.stacks else (find_family(self.module) or "unknown")

    @property
    def random_weights(self) -> bool:
        """A built-in tiny model (tiny:NAME, or a cut of one) that no vlaprune recovery has trained: what is
        computed on it says nothing about a trained policy, and outputs say so."""
        return random_weights(self.record)

    @property
    def config(self) -> Any:
        return getattr(self.module, "config", None)

    def layout(self) -> Layout:
        """The model's Layout as it is now (surgery changes it, so it is found afresh on every call)."""
        return find_layout(self.module, self.stacks)

    def drop_blocks(
        self, request: dict[str, list[int]], mode: str = "auto", part: str = "block"
    ) -> BlockPlan:
        """Remove blocks for real; the plan joins the record. mode "auto" (default): each component is cut
        alone (language blocks of joint-attention policies keep their K/V for the action expert; expert
        blocks go while their language partners stay), other blocks go whole with their coupled partners;
        "keep_kv": the same, refused where nothing reads the K/V; "pair": whole blocks and partners only
        (`vlaprune.surgery.plan`). part "attn" / "mlp": remove only that sublayer of each
        requested block (`vlaprune.surgery.sublayers`; `mode` does not apply)."""
        if part == "block":
            plan = drop_blocks(self.module, request, layout=self.layout(), mode=mode)
        else:
            plan = drop_sublayers(self.module, request, part, layout=self.layout())
        self.record.plans.append(plan)
        return plan

    def prune_units(self, units: dict, removal: str = "real", spec: list[str] | None = None) -> UnitPlan:
        """Remove FFN channels / attention heads (for real, or zeroed in place with removal="masked"); the
        plan joins the record."""
        plan = prune_units(self.module, units, layout=self.layout(), removal=removal, spec=spec)
        self.record.plans.append(plan)
        return plan

    def shrink_width(self, width: int, criterion: str = "magnitude", stack: str = "action") -> WidthPlan:
        """Cut the hidden width of the MLP-ResNet head holding `stack` (OpenVLA-OFT's action head) to `width`
        channels (`vlaprune.surgery.width`); the plan joins the record."""
        plan = shrink_width(self.layout(), stack, width, criterion)
        self.record.plans.append(plan)
        return plan

    def save(
        self,
        out_dir: str | Path,
        extra_json: dict[str, Any] | None = None,
        processors_from: str | Path | None = None,
    ) -> Path:
        """The model as a (pruned) checkpoint in a new folder, with its processors when it has saved ones
        (or those in `processors_from`, e.g. `Data.processors_folder()`)."""
        return save_pruned(
            self.module,
            self.record,
            out_dir,
            processors_from=processors_from or self.folder,
            extra_json=extra_json,
        )

    def copy(self) -> Loaded:
        """An independent copy (module and record deep-copied), e.g. to try a cut on the side."""
        return Loaded(
            copy.deepcopy(self.module),
            self.path,
            self.folder,
            self.stacks,
            copy.deepcopy(self.record),
            dict(self.tokenizers),
            self.trust_remote_code,
        )


def from_source(
    source: Source, path: str = "", stacks: str | None = None, trust_remote_code: bool = False
) -> Loaded:
    """The handle of a model loaded or built outside `load_policy` (e.g. `vlaprune.tiny.build(...)`). A
    tiny:NAME model's base record says random_weights (kept through cuts and saves, until a recovery)."""
    base = base_record(source, stacks or None, trust_remote_code)
    if base is not None and path.startswith("tiny:"):
        base = {**base, "random_weights": True}
    return Loaded(
        source.module,
        path,
        source.folder,
        stacks or None,
        PruningRecord(base=base, stacks=stacks or None),
        dict(source.tokenizers),
        trust_remote_code,
    )


def wrap(module: nn.Module, path: str = "", stacks: str | None = None) -> Loaded:
    """The handle of a module built in Python (e.g. `vlaprune.tiny.pi.tiny_pi()`); a builder's module keeps
    its builder and tokenizers (`vlaprune.adapters.load.source_of`)."""
    return from_source(source_of(module), path, stacks)


def load_policy(cfg: PolicyConfig | str | Path, stacks: str | None = None) -> Loaded:
    """Load what `cfg.path` names (see the module docstring), on `cfg.device` if set, in eval mode.
    Raises VlapruneError with a one-line fix on bad input."""
    cfg = cfg if isinstance(cfg, PolicyConfig) else PolicyConfig(path=str(cfg))
    if not cfg.path:
        raise VlapruneError(
            "--policy.path is required: a checkpoint folder, a hub id (org/name), or tiny:NAME for a "
            "built-in random-weight model (tiny:smolvla, tiny:pi0, tiny:pi05)"
        )
    folder = Path(cfg.path).expanduser()
    # ours, or lerobot-train's
    pruned = (folder / "plan.json").is_file() or record_from_config(folder) is not None
    if pruned and cfg.oft_head:
        raise VlapruneError(
            f"--policy.oft_head starts from a base OpenVLA folder; {folder} is a saved (pruned) checkpoint "
            "that keeps its own head: drop --policy.oft_head"
        )
    if pruned:
        source, record = load_pruned(folder, cfg.trust_remote_code)
        loaded = Loaded(
            source.module,
            cfg.path,
            folder,
            record.stacks,
            record,
            dict(source.tokenizers),
            cfg.trust_remote_code,
        )
    else:
        source = load_source(cfg.path, cfg.trust_remote_code, cfg.oft_head)
        loaded = from_source(source, cfg.path, stacks, cfg.trust_remote_code)
    if stacks and stacks != loaded.stacks:
        loaded.stacks = stacks
    if cfg.device:
        place(loaded.module, cfg.device)
    if loaded.random_weights:
        print(RANDOM_WEIGHTS_NOTE.format(path=cfg.path))  # stdout: errors stay one line on stderr
    return loaded


RANDOM_WEIGHTS_NOTE = (
    "vlaprune: note: {path} is a built-in tiny model with random weights; what is computed on it says "
    "nothing about a trained policy (files record random_weights: true)"
)
