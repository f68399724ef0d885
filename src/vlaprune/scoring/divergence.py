"""Where VLM-to-VLA adaptation moved the weights: dW = W_VLA - W_VLM, streamed tensor by tensor.

    vlaprune diverge --base=HuggingFaceTB/SmolVLM2-500M-Video-Instruct --tuned=lerobot/smolvla_base

Both checkpoints are read from safetensors in row chunks of at most --chunk_mb (float32), so two 7B
checkpoints compare on a 24 GiB machine: memory stays near one chunk pair, not a model. Names are mapped
from the VLA to the VLM by prefix rules (presets for SmolVLA <- SmolVLM2, pi0 / pi0.5 <- PaliGemma,
OpenVLA <- Llama-2, or your own `--map="vla.prefix.=>vlm.prefix.;..."`); `auto` picks the preset that
matches most tensors. Unmatched and shape-mismatched tensors are listed, never silently dropped.

Per tensor: relative Frobenius change ||dW||_F / ||W_VLM||_F and cosine(W_VLM, W_VLA); per channel: the
same relative change per row (output channel) and per column (input channel) of every matrix. Aggregated
per module type (vision / projector / language x attention q,k,v,o / mlp gate,up,down / ...) and layer.
Writes tensors.parquet, channels.parquet, summary.json and heatmap.png.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from vlaprune.adapters import VLM_MAPS
from vlaprune.errors import VlapruneError
from vlaprune.scoring.tensors import TensorSource

PRESETS = VLM_MAPS  # name mapping presets live with the adapters (architecture knowledge)

SUBTYPES = [
    (r"(q_proj|\.query)\.", "attn_q"),
    (r"(k_proj|\.key)\.", "attn_k"),
    (r"(v_proj|\.value)\.", "attn_v"),
    (r"(o_proj|out_proj|attn\.proj|attention\.dense)\.", "attn_o"),
    (r"qkv\.", "attn_qkv"),
    (r"gate_proj\.", "mlp_gate"),
    (r"(up_proj|fc1)\.", "mlp_up"),
    (r"(down_proj|fc2)\.", "mlp_down"),
    (r"(norm|ln_)", "norm"),
    (r"(embed|patch|position)", "embed"),
]


def parse_map(spec: str) -> list[tuple[str, str]] | None:
    """A preset name, "auto" (None), or "a.=>b.;c.=>d." prefix rules (VLA prefix => VLM prefix)."""
    spec = spec.strip()
    if spec in ("", "auto"):
        return None
    if spec in PRESETS:
        return PRESETS[spec]
    rules = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        if "=>" not in item:
            raise VlapruneError(
                f"--map item {item!r} is not VLA_PREFIX=>VLM_PREFIX (or a preset: {', '.join(PRESETS)})"
            )
        a, b = item.split("=>", 1)
        rules.append((a.strip(), b.strip()))
    return rules


def map_name(name: str, rules: list[tuple[str, str]]) -> str:
    for a, b in sorted(rules, key=lambda r: -len(r[0])):
        if name.startswith(a):
            return b + name[len(a) :]
    return name


def choose_rules(tuned: list[str], base: set[str]) -> tuple[str, list[tuple[str, str]]]:
    """The preset under which most VLA tensor names exist in the VLM."""
    scored = [(sum(map_name(n, r) in base for n in tuned), name, r) for name, r in PRESETS.items()]
    best = max(scored, key=lambda t: t[0])
    return best[1], best[2]


def module_type(name: str) -> tuple[str, str, int | None]:
    """(component, subtype, layer) of a (VLM-side) tensor name."""
    low = name.lower()
    if any(w in low for w in ("connector", "multi_modal_projector", "projector")):
        comp = "projector"
    elif any(w in low for w in ("vision", "visual", "featurizer", "vit")):
        comp = "vision"
    elif any(w in low for w in ("lm_expert", "gemma_expert", "action")):
        comp = "expert"
    else:
        comp = "language"
    sub = next((s for pat, s in SUBTYPES if re.search(pat, low)), "other")
    m = re.search(r"(?:layers|blocks|layer|h)\.(\d+)\.", name)
    return comp, sub, int(m.group(1)) if m else None


INPUT_PROJECTIONS = ("attn_o", "mlp_down")  # their columns are the units (heads / FFN channels)


@dataclass
class TensorStats:
    """Sums over one tensor pair. Matrices also keep per-channel sums on one axis: rows of output
    projections (q / k / v / gate / up ...), columns of input projections (o / down): `axis`, `ch_diff`,
    `ch_base` (float64). rel = sqrt(diff_sq / base_sq)."""

    base_sq: float
    tuned_sq: float
    diff_sq: float
    dot: float
    axis: str | None = None
    ch_diff: torch.Tensor | None = None
    ch_base: torch.Tensor | None = None
    max_chunk_bytes: int = 0

    @property
    def rel(self) -> float:
        if self.base_sq > 0:
            return math.sqrt(self.diff_sq / self.base_sq)
        return 0.0 if self.diff_sq == 0 else math.inf

    @property
    def cosine(self) -> float:
        d = math.sqrt(self.base_sq * self.tuned_sq)
        return self.dot / d if d > 0 else 1.0

    @property
    def ch_rel(self) -> torch.Tensor | None:
        return None if self.ch_diff is None else (self.ch_diff / self.ch_base.clamp_min(1e-30)).sqrt()


def _chunks(base: TensorSource, tuned: TensorSource, bname: str, tname: str, rows: int, step: int):
    """Row chunks of both tensors, read one chunk ahead in a thread (reads release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    starts = list(range(0, rows, step))
    read = lambda a: (base.rows(bname, a, min(rows, a + step)), tuned.rows(tname, a, min(rows, a + step)))  # noqa: E731
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(read, starts[0])
        for k, a in enumerate(starts):
            b, t = nxt.result()
            if k + 1 < len(starts):
                nxt = pool.submit(read, starts[k + 1])
            yield a, b, t


def compare_tensor(
    base: TensorSource, tuned: TensorSource, bname: str, tname: str, chunk_bytes: int, axis: str | None = None
) -> TensorStats:
    """Stream one tensor pair in row chunks of <= chunk_bytes (float32) each. axis: "row" / "col" channel
    sums for matrices (default: by module type, see INPUT_PROJECTIONS)."""
    shape = base.shape(bname)
    rows = shape[0] if shape else 1
    width = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, chunk_bytes // (4 * width))
    matrix = len(shape) >= 2
    if matrix and axis is None:
        axis = "col" if module_type(bname)[1] in INPUT_PROJECTIONS else "row"
    st = TensorStats(0.0, 0.0, 0.0, 0.0, axis=axis if matrix else None)
    if matrix:
        n = rows if axis == "row" else width
        st.ch_diff, st.ch_base = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    bd = 0.0
    for start, b, t in _chunks(base, tuned, bname, tname, rows, step):
        b = b.to(torch.float32).reshape(b.shape[0], -1)
        d = t.to(torch.float32).reshape(b.shape[0], -1).sub_(b)
        st.max_chunk_bytes = max(st.max_chunk_bytes, b.numel() * 4)
        bd += float(torch.dot(b.view(-1), d.view(-1)))
        if matrix and axis == "row":
            dd = torch.linalg.vector_norm(d, dim=1).double().square()
            bb = torch.linalg.vector_norm(b, dim=1).double().square()
            st.ch_diff[start : start + b.shape[0]] = dd
            st.ch_base[start : start + b.shape[0]] = bb
        elif matrix:
            dd, bb = d.mul_(d).sum(0).double(), b.mul_(b).sum(0).double()
            st.ch_diff += dd
            st.ch_base += bb
        else:
            dd, bb = d.double().square(), b.double().square()
        st.diff_sq += float(dd.sum())
        st.base_sq += float(bb.sum())
        del b, d
    st.dot = st.base_sq + bd  # t.b = b.b + b.d
    st.tuned_sq = st.base_sq + 2 * bd + st.diff_sq  # t.t = b.b + 2 b.d + d.d
    return st


def match(base: TensorSource, tuned: TensorSource, map_spec: str) -> dict[str, Any]:
    """Pairs (VLA name -> VLM name), unmatched names on both sides and shape mismatches."""
    rules = parse_map(map_spec)
    base_names = set(base.names())
    tuned_names = tuned.names()
    preset = map_spec
    if rules is None:
        preset, rules = choose_rules(tuned_names, base_names)
    pairs, mismatched = {}, []
    for n in tuned_names:
        b = map_name(n, rules)
        if b in base_names:
            if base.shape(b) == tuned.shape(n):
                pairs[n] = b
            else:
                mismatched.append(
                    {"tuned": n, "base": b, "tuned_shape": tuned.shape(n), "base_shape": base.shape(b)}
                )
    matched_base = set(pairs.values()) | {m["base"] for m in mismatched}
    return {
        "preset": preset,
        "rules": rules,
        "pairs": pairs,
        "shape_mismatch": mismatched,
        "unmatched_tuned": sorted(
            n for n in tuned_names if n not in pairs and map_name(n, rules) not in base_names
        ),
        "unmatched_base": sorted(base_names - matched_base),
    }
