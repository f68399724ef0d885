"""The DTR report's figures (PNG bytes): GateProbe scores per block, success and offline loss against blocks
removed before and after recovery (the asymmetry figure), success against latency and parameters.
"""

from __future__ import annotations

import io
from typing import Any

from vlaprune.evaluate.closed_loop import wilson
from vlaprune.experiments.results import curves


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def figures(data: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, bytes] = {}
    gp = [r for r in data["scores"] if r["spec"]["method"] == "gateprobe"]
    if gp:
        sc = gp[0]["scores"]
        fig, axes = plt.subplots(len(sc), 1, figsize=(7, 1.1 * len(sc) + 0.8), squeeze=False)
        for ax, (name, vals) in zip(axes[:, 0], sc.items()):
            im = ax.imshow([vals], aspect="auto", cmap="magma")
            ax.set_yticks([0], [name])
            ax.set_xticks(range(len(vals)))
            fig.colorbar(im, ax=ax, pad=0.01)
        axes[-1, 0].set_xlabel("block")
        fig.suptitle("GateProbe score per block (first-order loss increase if removed)")
        figs["gateprobe"] = _fig_png(fig)
    cv = curves(data)
    for metric, label in (("success", "closed-loop success"), ("loss", "offline loss (held-out)")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        for ax, phase in zip(axes, ("before", "after")):
            for (c, method), pts in sorted(cv.items()):
                xs = [p["removed"] for p in pts]
                if metric == "success":
                    ys = [p["m"][phase].get("success", float("nan")) for p in pts]
                    cis = [pooled_ci(p["m"][phase]) for p in pts]
                    err = [
                        [max(0.0, y - lo) for y, (lo, _) in zip(ys, cis)],
                        [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis)],
                    ]
                    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{c} / {method}")
                    ax.set_ylim(-0.02, 1.02)
                else:
                    ys = [p["m"][phase]["offline"]["loss"] for p in pts]
                    ax.plot(xs, ys, marker="o", label=f"{c} / {method}")
            ax.set_title(f"{phase} recovery")
            ax.set_xlabel("blocks removed")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(label)
        axes[1].legend(fontsize=8)
        figs[f"asymmetry_{metric}"] = _fig_png(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for m in data["measures"].values():
        y = m["after"].get("success", float("nan"))
        label = ", ".join(f"{s}-{n}" for s, n in m["blocks_removed"].items()) or "baseline"
        for ax, x in zip(axes, (m["cost"]["latency_ms"], m["cost"]["params"] / 1e6)):
            ax.scatter([x], [y])
            ax.annotate(label, (x, y), fontsize=7)
    axes[0].set_xlabel("select_action latency (ms)")
    axes[1].set_xlabel("parameters (M)")
    axes[0].set_ylabel("success after recovery")
    for ax in axes:
        ax.grid(alpha=0.3)
    figs["pareto"] = _fig_png(fig)
    return figs


def pooled_ci(ev: dict[str, Any]) -> tuple[float, float]:
    """Wilson 95% interval of the success rate pooled over all episodes of all tasks."""
    tasks = ev.get("tasks") or {}
    k = sum(t["successes"] for t in tasks.values())
    n = sum(t["episodes"] for t in tasks.values())
    return wilson(k, n) if n else (float("nan"), float("nan"))
