"""`vlaprune diverge`: run the streamed dW comparison and write its tables, summary and heatmap."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlaprune.adapters.load import HUB_ID, download
from vlaprune.atomic import atomic_dir
from vlaprune.errors import VlapruneError
from vlaprune.scoring.divergence import compare_tensor, match, module_type
from vlaprune.scoring.tensors import TensorSource


@dataclass
class DivergeConfig:
    # The base VLM and the VLA fine-tuned from it: checkpoint folders, .safetensors files or shard indexes.
    base: str = ""
    # The VLA fine-tuned from --base (the same kinds of path).
    tuned: str = ""
    # Name mapping VLA -> VLM: a preset, or your prefix rules "vla.prefix.=>vlm.prefix.;...". auto: the preset
    # that matches the most tensors; identity: the same names; smolvla: lerobot SmolVLA against its SmolVLM2;
    # pi0: lerobot pi0 / pi0.5 against google/paligemma-3b-pt-224 as on the hub; pi05: as pi0 (lerobot pi0.5
    # against the same PaliGemma); pi0-transformers5: against a PaliGemma saved by transformers 5; openvla:
    # OpenVLA against its Llama-2; oft: an OpenVLA-OFT folder (loaded with its head) against the Prismatic VLM
    # it started from; oft-llama: the same against its bare Llama-2.
    map: str = "auto"
    # Where the per-module / per-layer / per-channel divergence files and the report go.
    output_dir: str = "divergence"
    # Largest float32 chunk per tensor (MB): bounds peak memory; small chunks also stay in the CPU caches.
    chunk_mb: int = 4
    # Refuse the comparison when fewer than this fraction of the VLM's tensors find a partner.
    min_matched: float = 0.5

    def __post_init__(self) -> None:
        if not self.base or not self.tuned:
            raise VlapruneError("pass both --base=VLM_CHECKPOINT and --tuned=VLA_CHECKPOINT")
        if self.chunk_mb < 1:
            raise VlapruneError("--chunk_mb must be >= 1")


def _resolve(path: str) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if HUB_ID.match(path):
        return download(path, allow_patterns=["*.safetensors", "*.json"])
    raise VlapruneError(f"{path}: no such checkpoint file or folder")


def compare(cfg: DivergeConfig, progress: bool = True) -> dict[str, Any]:
    """Stats for every matched tensor pair, plus the matching report. Raises when the models differ."""
    from tqdm.auto import tqdm

    base, tuned = TensorSource(_resolve(cfg.base)), TensorSource(_resolve(cfg.tuned))
    m = match(base, tuned, cfg.map)
    n_base = len(base.names())
    covered = len(m["pairs"]) / max(1, n_base)
    if covered < cfg.min_matched:
        raise VlapruneError(
            f"only {len(m['pairs'])} of the VLM's {n_base} tensors match a VLA tensor (map {m['preset']!r}): "
            "different architectures, or a name mapping is needed (--map=smolvla|pi0|openvla|'vla.=>vlm.')"
        )
    chunk = cfg.chunk_mb * 2**20
    stats, t0, read = {}, time.perf_counter(), 0
    for tname, bname in tqdm(m["pairs"].items(), desc="tensors", disable=not progress):
        st = compare_tensor(base, tuned, bname, tname, chunk)
        stats[bname] = (tname, st)
        read += 2 * math.prod(base.shape(bname) or (1,))
    m["seconds"] = time.perf_counter() - t0
    m["elements_read"] = read
    m["stats"] = stats
    return m


def summarize(m: dict[str, Any]) -> dict[str, Any]:
    """Per module type and per (module type, layer): pooled relative change; channel quantiles."""
    pooled: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    per_layer: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    channels: dict[str, list] = defaultdict(list)
    import torch

    for bname, (_, st) in m["stats"].items():
        comp, sub, layer = module_type(bname)
        key = f"{comp}.{sub}"
        pooled[key][0] += st.diff_sq
        pooled[key][1] += st.base_sq
        if layer is not None:
            per_layer[key][layer][0] += st.diff_sq
            per_layer[key][layer][1] += st.base_sq
        if st.ch_rel is not None:
            channels[key].append(st.ch_rel.float())

    def rel(p):
        return math.sqrt(p[0] / p[1]) if p[1] > 0 else 0.0

    quant = {}
    for key, vs in channels.items():
        v = torch.cat(vs)
        q = torch.quantile(v[: 2**24], torch.tensor([0.1, 0.5, 0.9, 1.0])).tolist()
        quant[key] = dict(zip(("p10", "p50", "p90", "max"), q))
    return {
        "module_types": {k: rel(p) for k, p in sorted(pooled.items())},
        "per_layer": {
            k: {layer: rel(p) for layer, p in sorted(v.items())} for k, v in sorted(per_layer.items())
        },
        "channel_quantiles": quant,
    }


def heatmap(summary: dict[str, Any], path: Path) -> None:
    """Layer x module type relative change, one panel per component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    comps = sorted({k.split(".")[0] for k in summary["per_layer"]})
    fig, axes = plt.subplots(1, max(1, len(comps)), figsize=(5 * max(1, len(comps)), 4), squeeze=False)
    for ax, comp in zip(axes[0], comps):
        keys = [k for k in summary["per_layer"] if k.startswith(comp + ".")]
        layers = sorted({layer for k in keys for layer in summary["per_layer"][k]})
        grid = np.full((len(layers), len(keys)), np.nan)
        for j, k in enumerate(keys):
            for i, layer in enumerate(layers):
                grid[i, j] = summary["per_layer"][k].get(layer, np.nan)
        im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
        ax.set_xticks(range(len(keys)), [k.split(".", 1)[1] for k in keys], rotation=45, ha="right")
        ax.set_ylabel("layer")
        ax.set_title(f"{comp}: ||dW||/||W||")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tensor_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per matched tensor pair: names, module type, layer, relative change, cosine, base norm."""
    return [
        {
            "base": b,
            "tuned": t,
            "module_type": ".".join(map(str, module_type(b)[:2])),
            "layer": module_type(b)[2],
            "rel_fro": st.rel,
            "cosine": st.cosine,
            "base_norm": math.sqrt(st.base_sq),
        }
        for b, (t, st) in m["stats"].items()
    ]


def _channel_columns(m: dict[str, Any]) -> dict[str, list]:
    """Per-channel relative change, long format (base tensor, axis, channel index, rel)."""
    ch: dict[str, list] = {"base": [], "axis": [], "index": [], "rel": []}
    for b, (_, st) in m["stats"].items():
        if st.ch_rel is None:
            continue
        r = st.ch_rel
        ch["base"] += [b] * len(r)
        ch["axis"] += [st.axis] * len(r)
        ch["index"] += list(range(len(r)))
        ch["rel"] += r.tolist()
    return ch


def _report(cfg: DivergeConfig, m: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json: what was compared, how names matched, and the summary."""
    return {
        "base": cfg.base,
        "tuned": cfg.tuned,
        "map": m["preset"],
        "rules": m["rules"],
        "matched": len(m["pairs"]),
        "unmatched_tuned": m["unmatched_tuned"],
        "unmatched_base": m["unmatched_base"],
        "shape_mismatch": m["shape_mismatch"],
        "seconds": round(m["seconds"], 3),
        **summary,
    }


def _print(m: dict[str, Any], summary: dict[str, Any], out: Path) -> None:
    """The module-type table and the unmatched counts on the console."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"dW by module type ({len(m['pairs'])} tensors, map {m['preset']})", title_justify="left")
    for c in ("module type", "||dW||/||W||", "channel p50", "channel p90"):
        t.add_column(c, justify="left" if c == "module type" else "right")
    for k, v in summary["module_types"].items():
        q = summary["channel_quantiles"].get(k, {})
        t.add_row(k, f"{v:.4g}", *(f"{q[p]:.4g}" if p in q else "-" for p in ("p50", "p90")))
    console = Console(width=max(Console().width, 100))
    console.print(t)
    console.print(
        f"unmatched: {len(m['unmatched_tuned'])} VLA tensors (e.g. the action expert), "
        f"{len(m['unmatched_base'])} VLM tensors; shape mismatches: {len(m['shape_mismatch'])}"
    )
    console.print(f"wrote {out}")


def run(cfg: DivergeConfig) -> dict[str, Any]:
    """Compare, summarize, then write tensors.parquet, channels.parquet, summary.json and heatmap.png."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(cfg.output_dir)
    m = compare(cfg)
    summary = summarize(m)
    report = _report(cfg, m, summary)
    with atomic_dir(out, replace=True) as tmp:
        pq.write_table(pa.Table.from_pylist(_tensor_rows(m)), tmp / "tensors.parquet")
        pq.write_table(pa.table(_channel_columns(m)), tmp / "channels.parquet")
        (tmp / "summary.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        heatmap(summary, tmp / "heatmap.png")
    _print(m, summary, out)
    return report
