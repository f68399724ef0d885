"""Virtual gates on the residual stream of chosen blocks, as forward hooks that always remove themselves.

Two kinds:
  update_gates(layout, stacks, batch_size)   the paper's GateProbe gate: one per block on the block's whole
      residual update and one value per example, h_out = h_in + a[b] * F(h_in) with F = block(h_in) - h_in
      and a of shape (B,); keys (stack, i).
  virtual_gates(layout, stacks, granularity) one scalar g per block shared by its two branches,
      h1 = h + g*attn(h), h2 = h1 + g*mlp(h1), keys (stack, i); or one per branch, keys (stack, i, part)
      with part "attn" | "mlp".

At 1 every output is bit-identical (x * 1.0 == x and x - 0.0 == x in IEEE arithmetic); at 0 the block's
contribution is removed exactly (the residual stream passes through unchanged). The hooks sit on the
block's submodules (norms, attention output projection, MLP), never on the block's forward, because
lerobot's SmolVLA / pi0 / pi0.5 call those submodules directly from their joint-attention code.

    with update_gates(layout, ["language"], batch_size=8) as gates:
        loss_fn(batch).backward()
        gates.grads()   # {("language", 3): dL/da, a (8,) tensor, ...}
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.parts import find_branches
from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError

GRANULARITIES = ("block", "sublayer")
Key = tuple  # (stack, block) or (stack, block, "attn" | "mlp")
# The norm whose output feeds the MLP (pre-norm blocks): Llama / Gemma / Qwen2, SigLIP, GPT-2, ViT naming.
PRE_MLP_NORMS = ("post_attention_layernorm", "layer_norm2", "ln_2", "norm2", "layernorm_after")
SANDWICH_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")  # Gemma 2 / 3


def branch_modules(layout: Layout, stack: str) -> list[dict[str, Any]]:
    """Per block of `stack`: {"attn": attention output projection, "mlp": MLP, "entry": first norm,
    "pre_mlp": the norm feeding the MLP (None when not recognised), "sandwich": Gemma 2/3 post-norms}.
    Single-branch blocks (`Stack.single_branch`, x + ffn(x)): "attn" None, "mlp" and "entry" the branch,
    whose input is the block's input."""
    s = layout.stacks[stack]
    if s.single_branch:  # block(x) = x + branch(x) (OFT's MLPResNetBlock): one gate on the branch output
        branches = [block.get_submodule(s.single_branch) for block in s.blocks]
        return [{"attn": None, "mlp": b, "entry": b, "pre_mlp": None, "sandwich": False} for b in branches]
    out = []
    for i, block in enumerate(s.blocks):
        br = find_branches(block)
        if br is None:
            raise VlapruneError(
                f"stack {stack!r} block {i} ({type(block).__name__}) has no recognisable residual branches "
                "(an attention module with o_proj/out_proj/proj and an mlp/ffn); gates cannot be placed on it"
            )
        children = dict(block.named_children())
        out.append(
            {
                "attn": block.get_submodule(br.attn),
                "mlp": block.get_submodule(br.mlp),
                "entry": block.get_submodule(br.entry) if br.entry else None,
                "pre_mlp": next((children[n] for n in PRE_MLP_NORMS if n in children), None),
                "sandwich": any(n in children for n in SANDWICH_NORMS),
            }
        )
    return out


def _scale(out: Any, g: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """out * g(out); attention modules may return (output, weights)."""
    if isinstance(out, tuple):
        return (out[0] * g(out[0]), *out[1:])
    return out * g(out)


class VirtualGates:
    """The live gates. `values[key]` is a tensor of ones of `shape` (requires grad), shared by every call of
    its hooks: shape () for one scalar gate, (B,) for one value per example."""

    def __init__(self, keys: list[Key], device: torch.device, shape: tuple[int, ...] = ()) -> None:
        self.values: dict[Key, torch.Tensor] = {
            k: torch.ones(shape, device=device, requires_grad=True) for k in keys
        }

    def set(self, key: Key, value: float) -> None:
        with torch.no_grad():
            self.values[key].fill_(value)

    def reset(self) -> None:
        for k in self.values:
            self.set(k, 1.0)
            self.values[k].grad = None

    def grads(self) -> dict[Key, Any]:
        """dL/dg per gate: a float for scalar gates, a tensor of the gate's shape (zeros if unused) else."""
        out: dict[Key, Any] = {}
        for k, v in self.values.items():
            grad = torch.zeros_like(v) if v.grad is None else v.grad.detach().clone()
            out[k] = float(grad) if v.dim() == 0 else grad
        return out


@contextlib.contextmanager
def _hooked(plan: list[tuple[nn.Module, str, Callable]]) -> Iterator[None]:
    """Registers (module, "pre" | "post", hook) and removes every hook on exit, error or not."""
    handles = []
    try:
        for module, when, hook in plan:
            reg = module.register_forward_pre_hook if when == "pre" else module.register_forward_hook
            handles.append(reg(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def virtual_gates(
    layout: Layout, stacks: list[str] | None = None, granularity: str = "block"
) -> Iterator[VirtualGates]:
    """Scalar gates on the branches of every block of `stacks` (default: all). granularity "block": one gate
    per block shared by both branches, keys (stack, i); "sublayer": one per branch, keys (stack, i, "attn")
    and (stack, i, "mlp"). The gate scales the branch output, so the MLP reads h + g*attn(h)."""
    if granularity not in GRANULARITIES:
        raise VlapruneError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    stacks = list(layout.stacks) if stacks is None else stacks
    keyed: list[tuple[Key, nn.Module]] = []
    for name in stacks:
        for i, mods in enumerate(branch_modules(layout, name)):
            for part in ("attn", "mlp") if mods["attn"] is not None else ("mlp",):
                keyed.append(((name, i) if granularity == "block" else (name, i, part), mods[part]))
    device = next(layout.model.parameters()).device
    gates = VirtualGates(list(dict.fromkeys(k for k, _ in keyed)), device)
    plan = []
    for key, module in keyed:
        g = gates.values[key]
        plan.append((module, "post", lambda m, args, out, g=g: _scale(out, lambda x: g.to(x.dtype))))
    with _hooked(plan):
        yield gates


def _rows(a: torch.Tensor, x: torch.Tensor, where: str) -> torch.Tensor:
    """The per-example gate a (B,) as (B, 1, ..., 1) in x's dtype, to broadcast over x (B, ...)."""
    if x.dim() == 0 or x.shape[0] != a.shape[0]:
        raise VlapruneError(
            f"{where} ran on a leading dimension of {tuple(x.shape)[:1]}, not the batch size {a.shape[0]}: "
            "per-example gates need one row per example, so this stack cannot be probed per example"
        )
    return a.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)


def _update_hooks(where: str, mods: dict, a: torch.Tensor) -> list[tuple[nn.Module, str, Callable]]:
    """The four hooks that turn one block's output into h + a*F (see `update_gates`)."""
    state: dict[str, torch.Tensor] = {}

    def remember_input(m, args):
        _rows(a, args[0], where)
        state["h"] = args[0]  # the block input h, (B, T, D)

    def restore_mlp_input(m, args):
        h = state.pop("h", None)
        if h is None:
            raise VlapruneError(f"{where}: its MLP norm ran before its first norm; cannot gate this block")
        x = args[0]  # h + a*r1(attn)
        c = (a - 1) / torch.where(a == 0, torch.ones_like(a), a)  # any finite c at a = 0: mlp is scaled to 0
        return (x - _rows(c, x, where) * (x - h), *args[1:])  # = h + r1(attn); exactly x at a = 1

    def scale(m, args, out):
        return _scale(out, lambda x: _rows(a, x, where))

    return [
        (mods["entry"], "pre", remember_input),
        (mods["attn"], "post", scale),
        (mods["pre_mlp"], "pre", restore_mlp_input),
        (mods["mlp"], "post", scale),
    ]


@contextlib.contextmanager
def update_gates(layout: Layout, stacks: list[str] | None, batch_size: int) -> Iterator[VirtualGates]:
    """Per-example gates on the whole residual update of every block of `stacks` (default: all): `values[
    (stack, i)]` has shape (batch_size,), and block i of example b outputs h + a[b] * F(h).

    A pre-norm block computes h1 = h + r1(attn), out = h1 + r2(mlp(norm2(h1))), where r1, r2 are the
    identity or (pi0.5's adaRMS action expert) a multiplication by a gate from the time conditioning; both
    are linear in the branch output. Four hooks make out = h + a*(r1(attn) + r2(mlp)) = h + a*F while the
    MLP reads exactly what it reads at a = 1:
      first norm (pre):     remember h
      attention out (post): attn -> a*attn, so h1' = h + a*r1(attn)
      MLP norm (pre):       h1' -> h1' - (a-1)/a * (h1' - h) = h + r1(attn)
      MLP (post):           mlp -> a*mlp
    (Scaling only the MLP output to a*mlp + (a-1)*attn is exact only when r1 = r2 = identity.) Every hooked
    call must have the batch in its leading dimension; anything else raises VlapruneError."""
    stacks = list(layout.stacks) if stacks is None else stacks
    device = next(layout.model.parameters()).device
    keys = [(s, i) for s in stacks for i in range(len(layout.stacks[s]))]
    gates = VirtualGates(keys, device, (batch_size,))
    plan = []
    for s in stacks:
        for i, mods in enumerate(branch_modules(layout, s)):
            where = f"stack {s!r} block {i}"
            if mods["attn"] is None:  # single branch: out = x + a * ffn(x), exactly
                a = gates.values[(s, i)]
                plan.append(
                    (
                        mods["mlp"],
                        "post",
                        lambda m, args, out, a=a, w=where: _scale(out, lambda x: _rows(a, x, w)),
                    )
                )
                continue
            if mods["entry"] is None or mods["pre_mlp"] is None or mods["sandwich"]:
                raise VlapruneError(
                    f"{where}: not a pre-norm block with a recognised first norm and MLP norm (one of "
                    f"{', '.join(PRE_MLP_NORMS)}); no whole-update gate can go there, use gateprobe_branch"
                )
            plan += _update_hooks(where, mods, gates.values[(s, i)])
    with _hooked(plan):
        yield gates
