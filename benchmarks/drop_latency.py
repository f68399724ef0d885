"""Do vlaprune's default cuts make a VLA faster in proportion to the FLOPs they remove?

    .venv/bin/python benchmarks/drop_latency.py [--text-layers 16 --text-hidden 512 --rounds 15]

One run: a random-weight lerobot SmolVLA (real class) and copies of it with 25 / 50 / 75 % of the language
blocks dropped the default way (keep-K/V: the last k blocks keep only their input norm and k/v projections,
the expert keeps every block), and the same fractions of the action expert dropped the default way
(action-only: the last k expert blocks go, every language block stays). FLOPs per action chunk from torch's
counter; latency of `select_action` with the action
queue emptied (one full inference per call), timed in interleaved rounds (every model once per round) and
summarised by the median, so machine noise hits all variants alike. Reports, per variant, against the
uncut model as lerobot runs it and against the uncut model on vlaprune's joint forward (the code path the
cuts run; its denoising steps skip work lerobot repeats per step and run the expert's linears on weights
packed once for oneDNN: `vlaprune.adapters.smolvla.denoise`, `vlaprune.adapters.packed`):
  FLOP ratio pruned / original, latency ratio pruned / original,
  efficiency = measured speed-up / FLOP-ideal speed-up = (t_orig / t_pruned) / (F_orig / F_pruned)
and, per variant, the median time of the prefix pass (vision + language, once per chunk) and of the
denoising steps (the expert, 10 per chunk), to show where the time beyond the FLOPs goes.
Writes benchmarks/results/drop_latency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vlaprune.adapters import layout  # noqa: E402
from vlaprune.adapters.counting import count_flops  # noqa: E402
from vlaprune.adapters.lerobot.batch import example_batch  # noqa: E402
from vlaprune.surgery import drop_blocks  # noqa: E402
from vlaprune.tiny.smolvla import tiny_smolvla, write_tiny_smolvlm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text-layers", type=int, default=16)
    ap.add_argument("--text-hidden", type=int, default=512)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--vision-hidden", type=int, default=256)
    ap.add_argument("--fractions", default="0.25,0.5,0.75")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="benchmarks/results/drop_latency.json")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    vlm = write_tiny_smolvlm(
        Path(tempfile.mkdtemp()) / "vlm",
        text_layers=args.text_layers,
        text_hidden=args.text_hidden,
        vision_layers=args.vision_layers,
        vision_hidden=args.vision_hidden,
    )
    base = tiny_smolvla(vlm, num_vlm_layers=args.text_layers)
    base.config.tokenizer_max_length = 48  # SmolVLA's default text budget
    n = args.text_layers
    # the uncut model on the joint forward every in-place cut runs (lerobot's numbers, bit for bit: tested),
    # so that the ratios below compare the cut, not the code path
    same_path = copy.deepcopy(base)
    layout(same_path).skip_in_place["action"].install()
    variants = {"original": (base, 0), "original (vlaprune joint forward)": (same_path, 0)}
    for component, kind in (("language", "keep-K/V"), ("action", "action-only")):
        for f in (float(x) for x in args.fractions.split(",")):
            k = max(2, int(round(f * n / 2)) * 2)
            model = copy.deepcopy(base)
            plan = drop_blocks(model, {component: list(range(n - k, n))})
            assert plan.mode == kind.lower().replace("-", "_").replace("k/v", "kv"), plan.mode
            variants[f"drop {k}/{n} {component} ({kind})"] = (model, k)
    batch = example_batch(base, 1)
    calls = {}
    for name, (model, _) in variants.items():

        def call(m=model):
            m.reset()
            return m.select_action(dict(batch))

        calls[name] = call
    flops = {name: sum(count_flops(m, layout(m).forward, {}).values()) for name, (m, _) in variants.items()}
    times = {name: [] for name in variants}
    phases = {name: {"prefix": [], "denoise": []} for name in variants}
    with torch.no_grad():
        for fn in calls.values():  # warm-up
            fn()
            fn()
        for _ in range(args.rounds):
            for name, fn in calls.items():
                with phase_clock(variants[name][0]) as clock:
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
                for phase, seconds in clock.items():
                    phases[name][phase].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for name in variants:
        row = {
            "variant": name,
            "params": sum(p.numel() for p in variants[name][0].parameters()),
            "flops_per_chunk": flops[name],
            "median_ms": round(1e3 * med[name], 2),
            "prefix_ms": round(1e3 * statistics.median(phases[name]["prefix"]), 2),
            "denoise_ms": round(1e3 * statistics.median(phases[name]["denoise"]), 2),
        }
        for ref, tag in (("original", ""), ("original (vlaprune joint forward)", "_same_path")):
            f_ratio, t_ratio = flops[name] / flops[ref], med[name] / med[ref]
            row[f"flop_ratio{tag}"] = round(f_ratio, 4)
            row[f"latency_ratio{tag}"] = round(t_ratio, 4)
            row[f"efficiency{tag}"] = round((1 / t_ratio) / (1 / f_ratio), 4)
        rows.append(row)
    result = {
        "machine": f"{cpu_name()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "model": f"SmolVLA random weights, {rows[0]['params'] / 1e6:.1f} M params, "
        f"text {n}x{args.text_hidden}, "
        f"vision {args.vision_layers}x{args.vision_hidden}, 48 text tokens, 10 denoising steps",
        "rounds": args.rounds,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


@contextlib.contextmanager
def phase_clock(policy):
    """Seconds spent in the joint VLM + expert forward during the block, split into the prefix pass
    (inputs_embeds[0] given) and the denoising steps (prefix None): {"prefix": s, "denoise": s}."""
    vwe = policy.model.vlm_with_expert
    own = vars(vwe).get("forward")  # a cut's joint forward on the instance, or None (the class's)
    forward, clock = vwe.forward, {"prefix": 0.0, "denoise": 0.0}

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = forward(*args, **kwargs)
        clock["prefix" if kwargs["inputs_embeds"][0] is not None else "denoise"] += time.perf_counter() - t0
        return out

    vwe.forward = timed
    try:
        yield clock
    finally:
        if own is None:
            del vwe.forward
        else:
            vwe.forward = own


def cpu_name() -> str:
    """The CPU model as lscpu / /proc/cpuinfo name it (e.g. "AMD EPYC"), or "unknown CPU"."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
