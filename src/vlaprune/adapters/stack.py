"""What an adapter returns: where the blocks of each component live and how the stacks are coupled.

A *stack* is a ModuleList of *blocks* (0-based). Every later stage (scoring, surgery, evaluation) reads
architecture knowledge from these records and never tests the policy's class itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

COMPONENTS = ("vision", "language", "action", "projector")


@dataclass
class Counter:
    """A config attribute that must equal the stack's block count after surgery, e.g.
    `Counter(policy.config, "num_vlm_layers")`. `where` is the dotted path shown to users."""

    owner: Any
    attr: str
    where: str


@dataclass
class ReadOut:
    """The model reads a stack's features at block `index`, not at its last block (Prismatic binds its vision
    towers' forward to `get_intermediate_layers(n={depth - 2})`): later blocks run but nothing reads them.
    rebind(k): make block k the read-out (surgery calls it after a drop, so the same block stays read)."""

    index: int
    rebind: Callable[[int], None]


@dataclass
class Stack:
    """One stack of blocks.

    name: unique key, the component or `component.label` ("vision", "vision.fused", "language").
    component: one of COMPONENTS.
    path: dotted path of the ModuleList from the model root, e.g. "model.layers".
    blocks: the ModuleList itself (surgery replaces it on `parent.<attr>`).
    counters: config attributes that count the blocks (updated by surgery).
    layer_idx_attr: dotted attribute inside each block holding its KV-cache index ("self_attn.layer_idx"),
        renumbered by surgery; None when the blocks keep no such index.
    notes: one short string per block (e.g. "self-attn" / "cross-attn"), or empty.
    exit: dotted path (from the model root) of the module that receives the last block's output (the final
        norm), so that block outputs can be observed where the policy never calls a block's forward.
    readout: where the model reads the stack when that is not its last block (`ReadOut`), else None.
    single_branch: for blocks with one residual branch and no attention (block(x) = x + branch(x), e.g.
        OFT's MLPResNetBlock: "ffn"), the branch's path inside each block; None for transformer blocks.
    The blocks are a ModuleList or an nn.Sequential (timm's ViTs); surgery keeps the container's type.
    """

    name: str
    component: str
    path: str
    parent: nn.Module
    attr: str
    counters: list[Counter] = field(default_factory=list)
    layer_idx_attr: str | None = None
    notes: list[str] = field(default_factory=list)
    exit: str | None = None
    readout: ReadOut | None = None
    single_branch: str | None = None

    @property
    def blocks(self) -> nn.ModuleList | nn.Sequential:
        return getattr(self.parent, self.attr)

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass
class Coupling:
    """A rule that ties two stacks together.

    kind: "lockstep" (same depth, block i of `a` runs with block i of `b`: dropping one drops both) or
        "paired" (block j of `b` runs with block pairs[j] of `a`; blocks of `a` without a partner run alone).
    pairs: for each block of `b`, the index of its partner block in `a`.
    rule: the rule in words, as shown in the anatomy table.
    period: attention-pattern period (SmolVLA's self_attn_every_n_layers): block i of `a` and block j of `b`
        are self-attention iff index % period == 0, cross-attention otherwise; every kept block must keep
        its kind at its new index. 0 = no pattern.
    """

    kind: str
    a: str
    b: str
    pairs: list[int]
    rule: str
    period: int = 0


@dataclass
class KeepKV:
    """A stack whose blocks can be dropped while their keys / values stay (DTR's drop for joint attention).

    stack: the stack whose K/V another stack attends to ("language"); reader: that stack ("action").
    read: per block of `stack`, whether a block of `reader` attends to its K/V (SmolVLA with fewer expert
        blocks than VLM blocks: only the partnered ones); a dropped block nobody reads keeps nothing.
    install: puts the kv-only-aware joint forward on the model (an instance-level override of the joint
        module's forward; idempotent). Surgery calls it after turning blocks into kv-only layers.
    """

    stack: str
    reader: str
    read: list[bool]
    install: Callable[[], None]


@dataclass
class SkipInPlace:
    """A stack whose blocks can go alone, in place (the DTR paper's action-only drop): a dropped block becomes
    a `SkippedBlock` at its index (its tokens pass through, h_out = h_in), and the stack it runs beside
    (`partner`) keeps every block. The action expert of SmolVLA / pi0 / pi0.5.

    install: puts the joint forward that passes skipped blocks through on the model (the same override that
        runs kv-only layers; idempotent)."""

    stack: str
    partner: str
    install: Callable[[], None]


@dataclass
class Layout:
    """The anatomy an adapter finds in a loaded model.

    family: adapter name ("smolvla", "pi0", "pi05", "hf", "paths").
    stacks: by name, in forward order.
    couplings: the rules surgery must respect.
    parts: per component, dotted paths of the modules outside the stacks that belong to it (embeddings,
        final norms, the vision-language projector, action projections); missing paths are skipped.
    forward: runs one representative forward pass (used to count FLOPs), or None if none is known.
    forward_desc: what that pass is, e.g. "predict_action_chunk, batch 1".
    training_forward: one training-loss forward on an example batch (lerobot policies), or None.
    config_expresses: stacks whose block count the family's own config can express, so that the family's
        own `from_pretrained` rebuilds a pruned model with the right shape (others need vlaprune's loader).
    action_out: dotted path of the module whose output is the policy's action-space prediction (the
        flow-matching velocity of SmolVLA / pi0 / pi0.5), or None; distillation matches it.
    noise: dotted path of the module whose `sample_noise(shape, device)` draws the policy's sampling noise
        at inference (SmolVLA / pi0 / pi0.5: "model"), or None; closed-loop evaluation seeds it per episode.
    keep_kv: stacks whose blocks can go while their K/V stay (`KeepKV`, by stack name); empty when no
        stack attends to another's keys / values.
    skip_in_place: stacks whose blocks can go alone while the stack they run beside keeps all of its blocks
        (`SkipInPlace`, by stack name: the action expert of joint-attention policies).
    example_weights: batch -> w (B,) with batch loss = sum_b w[b] * (example b's own loss), for per-example
        scores (GateProbe); None where the scoring code knows the family's rule (lerobot policies).
    """

    family: str
    model: nn.Module
    stacks: dict[str, Stack]
    couplings: list[Coupling] = field(default_factory=list)
    parts: dict[str, list[str]] = field(default_factory=dict)
    forward: Callable[[], Any] | None = None
    forward_desc: str = ""
    training_forward: Callable[[], Any] | None = None
    config_expresses: set[str] = field(default_factory=set)
    action_out: str | None = None
    noise: str | None = None
    keep_kv: dict[str, KeepKV] = field(default_factory=dict)
    skip_in_place: dict[str, SkipInPlace] = field(default_factory=dict)
    example_weights: Callable[[Any], Any] | None = None


def resolve(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, module) for a dotted path; raises KeyError/AttributeError if absent."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, attr, getattr(parent, attr)


def make_stack(model: nn.Module, name: str, path: str, **kw: Any) -> Stack:
    """A Stack for the ModuleList at `path` in `model`."""
    parent, attr, _ = resolve(model, path)
    component = name.split(".")[0]
    return Stack(name=name, component=component, path=path, parent=parent, attr=attr, **kw)
