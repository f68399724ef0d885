"""Divergence-guided, recovery-free pruning end to end on a realistic pair: a tiny pi0.5 whose VLM weights
are saved before fine-tuning (the "VLM"), fine-tuned on the shipped MetaWorld demonstrations (the "VLA").

    .venv/bin/python benchmarks/divergence_e2e.py [--steps 300 --work DIR]

1. `tiny_pi("pi05")` (lerobot's PI05Policy, PaliGemma-shaped Gemma with one KV head, random weights; state and
   action normalized by mean / std, see `register_pi05_mean_std`); its PaliGemma weights are written as the
   base VLM checkpoint (transformers' own names).
2. `vlaprune recover --trainable=all` fine-tunes it for --steps on the demo dataset (train episodes only:
   --holdout 0.2 --validation 0.2 keep each task's last episodes out), giving the VLA.
3. `vlaprune diverge` (base VLM vs VLA).
4. `vlaprune prune-units` with each dW preset (dw, dw_openvla, dw_pi05) in each direction (high = remove the
   most-moved units, low = the least-moved) and with every baseline (magnitude, wanda, taylor, flap, random)
   on the same modules and ratios: language FFN --lang of the channels and vision FFN --vision, both ranked
   globally across the stack's blocks as the public code does (the last language block protected: its MLP
   output is never read in pi0.5, only its K/V, so it does not move and has zero gradient), real removal,
   no recovery. Judged on the
   held-out test episodes (policy loss and action L1, fixed noise).
Writes benchmarks/results/divergence_e2e.json (every row, plus machine facts). Random-init "VLM": what
adaptation moves here is what 300 steps of fine-tuning from random weights move, not a pretrained VLM's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "src/vlaprune/assets/metaworld4/dataset"
PRESETS = ("dw", "dw_openvla", "dw_pi05")
BASELINES = ("magnitude", "wanda", "taylor", "flap", "random")


def vlaprune(*args: str) -> None:
    """The CLI, in this process (so the builder registered below is known to every stage)."""
    from vlaprune.cli import main as cli

    print("$ vlaprune", " ".join(args), flush=True)
    if cli(list(args)) != 0:
        raise SystemExit(f"vlaprune {args[0]} failed")


def register_pi05_mean_std() -> None:
    """`tiny:pi05-meanstd`: tiny:pi05 normalizing state and action by mean / std. pi0.5's default quantile
    normalization divides by q99 - q01, which is 0 for the demo data's gripper action (it is 0.785 in 98% of
    the frames), so its normalized actions reach 1e8 and the loss 1e15."""
    from lerobot.configs.types import NormalizationMode

    import vlaprune.tiny  # noqa: F401  (registers tiny:pi05)
    from vlaprune.adapters.load import BUILDERS, register_builder

    def build(config=None, **kw):
        src = BUILDERS["tiny:pi05"](config=config, **kw)
        if config is None:
            m = dict(src.module.config.normalization_mapping)
            m["STATE"] = m["ACTION"] = NormalizationMode.MEAN_STD
            src.module.config.normalization_mapping = m
        src.builder = {**(src.builder or {}), "name": "tiny:pi05-meanstd"}
        return src

    register_builder("tiny:pi05-meanstd", build)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lang", type=float, default=0.3)
    ap.add_argument("--vision", type=float, default=0.2)
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="vlaprune-dw-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    register_pi05_mean_std()
    t0 = time.perf_counter()
    if not (work / "vlm/model.safetensors").exists():
        from safetensors.torch import save_file

        from vlaprune.tiny.pi import tiny_pi

        pali = tiny_pi("pi05").model.paligemma_with_expert.paligemma
        (work / "vlm").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in pali.state_dict().items()}, work / "vlm/model.safetensors")
    if not (work / "vla/final").exists():
        vlaprune(
            "recover", "--policy.path=tiny:pi05-meanstd", f"--dataset.root={DATASET}",
            f"--steps={args.steps}",
            "--batch_size=8", "--trainable=all", "--holdout=0.2", "--validation=0.2", "--log_every=50",
            f"--save_every={args.steps}", f"--output_dir={work / 'vla'}",
        )  # fmt: skip
    trained_s = time.perf_counter() - t0
    if not (work / "diverge/summary.json").exists():
        vlaprune(
            "diverge",
            f"--base={work / 'vlm'}",
            f"--tuned={work / 'vla/final'}",
            f"--output_dir={work / 'diverge'}",
        )
    summary = json.loads((work / "diverge/summary.json").read_text())
    rows = []
    for i, (preset, direction) in enumerate((p, d) for p in PRESETS for d in ("high", "low")):
        out = work / f"prune_{preset}_{direction}"
        if not (out / "prune.json").exists():
            spec = (  # the last language block's MLP feeds nothing in pi0.5 (only its K/V): protected
                f"language.mlp={preset}:{direction}:{args.lang}:global:protect=3 "
                f"vision.mlp={preset}:{direction}:{args.vision}:global"
            )
            vlaprune(
                "prune-units", f"--policy.path={work / 'vla/final'}", f"--dataset.root={DATASET}",
                f"--base={work / 'vlm'}", f"--spec={spec}",
                "--calibration.batches=4", "--calibration.batch_size=8",
                f"--compare={','.join(BASELINES) if i == 0 else ''}", f"--output_dir={out}",
            )  # fmt: skip
        report = json.loads((out / "prune.json").read_text())
        for r in report["rows"]:
            if "error" in r:
                rows.append({"arm": r["criterion"], "error": r["error"]})
                continue
            name = f"{preset}:{direction}" if r["criterion"] == "spec" else r["criterion"]
            rows.append(
                {
                    "arm": name,
                    "spec": r["spec"],
                    "units_removed": r["units_removed"],
                    "params_removed_pct": round(r["params_removed_pct"], 2),
                    "test_loss": round(r["loss"], 4),
                    "loss_change": round(r["loss_change"], 4),
                    "action_l1": round(r["l1"], 4),
                }
            )
        original = report["original"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}",
        "pair": f"tiny pi0.5 (PI05Policy), fine-tuned {args.steps} steps (batch 8, all parameters) on the "
        "MetaWorld demo dataset's train episodes; base VLM = its PaliGemma weights before fine-tuning",
        "modules": f"language.mlp {args.lang} + vision.mlp {args.vision}, global scope, real removal",
        "judged_on": report["judged_on"],
        "diverge_module_types": summary["module_types"],
        "unpruned": {"test_loss": round(original["loss"], 4), "action_l1": round(original["l1"], 4)},
        "rows": rows,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "seconds_fine_tune": round(trained_s, 1),
    }
    path = ROOT / "benchmarks/results/divergence_e2e.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"unpruned: test loss {original['loss']:.4f}, action L1 {original['l1']:.4f}")
    for r in sorted((r for r in rows if "error" not in r), key=lambda r: r["test_loss"]):
        print(
            f"{r['arm']:>16}: test loss {r['test_loss']:.4f} ({r['loss_change']:+.4f}), "
            f"L1 {r['action_l1']:.4f}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
