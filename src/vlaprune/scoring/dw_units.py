"""How far VLM-to-VLA adaptation moved each unit (FFN channel, attention head): the dW unit criteria.

dW = W_VLA - W_VLM for every Linear a unit owns. Each function returns, per block, {"ffn": (n_ffn,),
"q": (n_q,), "kv": (n_kv,)} float64 *movements* (higher = moved more); the caller orients them (remove the
most- or the least-moved units). Beside vlaprune's own reconstruction `dw` (sqrt(sum ||dW||^2 /
sum ||W_VLM||^2) over all of a unit's rows and columns, `vlaprune.scoring.units.dw_reconstruction`), the
divergence paper's public code, selectable per module:

  dw_openvla  the divergence paper's public code, OpenVLA recipe: per row r = ||dW_row|| / (||W_row|| + 1e-8)
              (per column for down / o). LLM FFN channel = r(gate row) + r(up row) + r(down column); FFN
              with fc1 / fc2 (vision) = r(fc1 row); head = mean r over its q_proj rows, or over its rows of
              a fused qkv (q, k and v parts). KV heads get no score of their own (0).
  dw_pi05     the public code, pi0.5 recipe: absolute row norms a = ||dW_row||. FFN channel = a(gate_proj
              row) only (fc1 row without a gate); query head = (mean a over its q rows + mean a over the k
              rows of its KV group) / 2 (fused qkv: its own k rows). KV heads 0.

The public code ranks these jointly across a component's layers (`scope=global` in the unit spec) and zeroes
or removes them; selection and removal live in vlaprune.surgery.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlaprune.adapters.parts import attn_parts, ffn_parts

PRESETS = ("dw_openvla", "dw_pi05")  # the public code's recipes ("dw" is in scoring.units)
EPS = 1e-8  # the public code's denominator guard


def _norms(lin: nn.Linear, base: torch.Tensor, axis: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(||dW||, ||W_VLM||) per row (axis "row") or column ("col"), float64."""
    w, b = lin.weight.detach().double(), base.double()
    dim = 1 if axis == "row" else 0
    return torch.linalg.vector_norm(w - b, dim=dim), torch.linalg.vector_norm(b, dim=dim)


def movement(
    block: nn.Module, kinds: set[str], preset: str, base_of: Callable[[nn.Linear], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-unit movement of one block under `preset` (see module docstring). base_of(lin) -> W_VLM (fp32)."""
    out: dict[str, torch.Tensor] = {}
    if "ffn" in kinds:
        mlp, ins, down = ffn_parts(block)
        rows = {n: _norms(getattr(mlp, n), base_of(getattr(mlp, n)), "row") for n in ins}
        col = _norms(getattr(mlp, down), base_of(getattr(mlp, down)), "col")
        if preset == "dw_openvla":
            rel = {n: r[0] / (r[1] + EPS) for n, r in rows.items()}
            gated = "gate_proj" in rel
            out["ffn"] = rel["gate_proj"] + rel["up_proj"] + col[0] / (col[1] + EPS) if gated else rel["fc1"]
        else:
            out["ffn"] = rows["gate_proj"][0] if "gate_proj" in rows else rows["fc1"][0]
    if kinds & {"q", "kv"}:
        out |= _heads(block, preset, base_of)
    return out


def _heads(block: nn.Module, preset: str, base_of) -> dict[str, torch.Tensor]:
    p = attn_parts(block)
    a, d, n_q, n_kv = p["attn"], p["head_dim"], p["n_q"], p["n_kv"]
    if p["qkv"]:
        dw, b = _norms(a.qkv, base_of(a.qkv), "row")
        dw, b = dw.reshape(3, n_q, d), b.reshape(3, n_q, d)  # part (q, k, v), head, row in head
        if preset == "dw_openvla":
            q = (dw / (b + EPS)).mean((0, 2))
        else:
            q = (dw[0].mean(1) + dw[1].mean(1)) / 2
        return {"q": q, "kv": torch.zeros(n_q, dtype=torch.float64)}
    qn = _norms(a.q_proj, base_of(a.q_proj), "row")
    kn = _norms(a.k_proj, base_of(a.k_proj), "row")
    if preset == "dw_openvla":
        q = (qn[0] / (qn[1] + EPS)).reshape(n_q, d).mean(1)
    else:
        k_group = kn[0].reshape(n_kv, d).mean(1)
        q = (qn[0].reshape(n_q, d).mean(1) + k_group.repeat_interleave(n_q // n_kv)) / 2
    return {"q": q, "kv": torch.zeros(n_kv, dtype=torch.float64)}
