"""How recovery-free pruning is judged (`vlaprune prune-units`): the same held-out batches, latency and
closed-loop episodes for the original and every pruned model, a table, and paired closed-loop verdicts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlaprune.data import Data, action_error, policy_loss
from vlaprune.evaluate.closed_loop import wilson
from vlaprune.evaluate.cost import inference_call, latency
from vlaprune.evaluate.paired import compare, pair_episodes, verdict
from vlaprune.evaluate.run import closed_loop
from vlaprune.policy import Loaded


class Judge:
    """Measures one model the same way every time: loss and action L1 on fixed test batches, `select_action`
    latency, and, with --env.type, closed-loop success with its Wilson interval and per-episode records
    (for paired comparisons). The dataset is opened once (`data`) and split per task into train (scoring
    calibrates on it), validation (the --budget search selects on it) and test (reported)."""

    def __init__(self, cfg: Any, data: Data, policy: Loaded | None = None):
        self.cfg = cfg
        parts = data.splits(cfg.holdout, cfg.validation if cfg.budget else 0.0)
        self.parts = parts
        self.held_out = bool(parts.test)
        if policy is not None and parts.test:
            data.check_held_out(policy.record.trained_on, parts.test, "the held-out")
        n, size = cfg.calibration.batches, cfg.calibration.batch_size
        self.calibration = data.batches(n, size, cfg.seed, parts.train)
        self.batches = data.batches(n, size, cfg.seed, parts.test) if parts.test else self.calibration
        self.selection = (
            data.batches(n, size, cfg.seed, parts.validation) if parts.validation else self.calibration
        )
        self.episodes = parts.test or parts.train
        self.pre_post = data.processors() if cfg.env.type else None

    def loss(self, m: nn.Module, batches: list[dict] | None = None) -> float:
        """Mean loss on `batches` (default: the test batches)."""
        batches = batches or self.batches
        fn = policy_loss(m, self.cfg.seed)
        with torch.no_grad():
            return sum(float(fn(i, b)) for i, b in enumerate(batches)) / len(batches)

    def selection_loss(self, m: nn.Module) -> float:
        """The loss the --budget search minimizes: validation batches (or calibration), never test."""
        return self.loss(m, self.selection)

    def __call__(self, m: Loaded, progress=None) -> dict[str, Any]:
        abs_sum, steps = 0.0, 0
        for i, b in enumerate(self.batches):
            err = action_error(m.module, b, i, self.cfg.seed)
            abs_sum, steps = abs_sum + float(err[0].sum()), steps + err[2]
        out = {
            "loss": self.loss(m.module),
            "l1": abs_sum / max(1, steps * len(err[0])),  # per action dimension
            "latency_ms": latency(inference_call(m.layout()), 10, 2)["median_ms"],
        }
        if self.pre_post:
            res = closed_loop(m.module, *self.pre_post, self.cfg.env, self.cfg.eval, progress=progress)[
                "normal"
            ]
            k = sum(t["successes"] for t in res["tasks"].values())
            n = sum(t["episodes"] for t in res["tasks"].values())
            out |= {
                "success": res["mean_success"],
                "success_ci95": list(wilson(k, n)),
                "success_tasks": {
                    t: {
                        key: v[key]
                        for key in ("success_rate", "successes", "episodes", "ci95", "episodes_detail")
                    }
                    for t, v in res["tasks"].items()
                },
            }
        return out


def table(original: dict[str, Any], rows: list[dict[str, Any]], held_out: bool):
    from rich.table import Table

    where = "held-out episodes" if held_out else "calibration batches"
    t = Table(title=f"recovery-free unit pruning (loss and action L1 on {where})", title_justify="left")
    cols = ["criterion", "params cut", "loss", "change", "action L1", "latency ms"]
    if "success" in original:
        cols += ["success [95% CI]", "paired change [95% CI]", "verdict"]
    for c in cols:
        t.add_column(c, justify="left" if c == "criterion" else "right", no_wrap=True)
    for r in [original, *(r for r in rows if "error" not in r)]:
        cells = [
            r["criterion"],
            "masked" if r.get("removal") == "masked" else f"{r.get('params_removed_pct', 0.0):.1f}%",
            f"{r['loss']:.4f}",
            f"{r['loss'] - original['loss']:+.4f}",
            f"{r['l1']:.4f}",
            f"{r['latency_ms']:.1f}",
        ]
        if "success" in original:
            lo, hi = r["success_ci95"]
            p = r.get("success_paired")
            cells += [
                f"{r['success']:.2f} [{lo:.2f},{hi:.2f}]",
                f"{p['difference']:+.2f} [{p['ci_low']:+.2f},{p['ci_high']:+.2f}]" if p else "-",
                p["verdict"] if p else "-",
            ]
        t.add_row(*cells)
    return t


def paired(original: dict[str, Any], row: dict[str, Any], tol: float = 0.05) -> dict[str, Any]:
    """The pruned model's closed-loop success against the original's, episode by episode (same task, same
    seed): difference, Newcombe 95% interval, McNemar p and the verdict at `tol` (evaluate/paired.py)."""
    pairs = pair_episodes(
        {t: v["episodes_detail"] for t, v in original["success_tasks"].items()},
        {t: v["episodes_detail"] for t, v in row["success_tasks"].items()},
    )
    result = compare(*pairs)
    return {**result, "verdict": verdict(result, tol)}
