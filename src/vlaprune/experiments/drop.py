"""`vlaprune drop`: remove blocks, save the pruned checkpoint, and report what the cut saves (params, FLOPs,
latency).

It combines surgery with evaluation's cost report, hence it lives in experiments/.

vlaprune drop --policy.path=lerobot/smolvla_base --drop.language=2,3 --output_dir=out/smolvla-14
vlaprune drop --policy.path=... --drop.from=scores.json --drop.k=8 --drop.components=language --output_dir=...
vlaprune drop --policy.path=... --drop.language=2,3 --drop.mode=pair --output_dir=...   # partners go too
vlaprune drop --policy.path=... --drop.language=drop_half --drop.part=mlp --output_dir=...  # MLP-only
vlaprune drop --policy.path=OFT_FOLDER --policy.trust_remote_code=true --drop.head_width=2048 --output_dir=...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaprune.adapters.stack import Layout
from vlaprune.configs import PolicyConfig
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.cost import cost, cost_table
from vlaprune.policy import load_policy
from vlaprune.surgery.dead import dead_request
from vlaprune.surgery.levels import PROTOCOL_LEVELS, protocol_blocks
from vlaprune.surgery.plan import MODES, plan_to_dict, resolve_drops
from vlaprune.surgery.select import select_blocks
from vlaprune.surgery.sublayers import PARTS, resolve_sublayers
from vlaprune.surgery.width import CRITERIA, resnet_of


@dataclass
class DropSpec:
    # Blocks to drop per component (--drop.vision and --drop.action take the same values).
    # INDICES: 0-based block indices, comma-separated, e.g. --drop.language=3,7; drop_half: the odd-indexed
    # blocks (the paper's metric-free level); keep_2: all but the first and the last (likewise).
    language: str = ""
    # Vision-encoder blocks to drop (the same values as --drop.language).
    vision: str = ""
    # Action-expert blocks to drop (the same values; --drop.mode=auto keeps every language block).
    action: str = ""
    # Any stacks by name: "vision.dino=1,2;language=3".
    blocks: str = ""
    # Or let a scores.json choose k blocks of `components` (`--drop.from=`): the cheapest valid plan, coupled
    # partners' scores included, as the DTR sweep chooses (`vlaprune.surgery.select`); the k lowest-scoring
    # blocks whenever they need no partners.
    scores: str = ""
    # How many blocks the scores choose (with --drop.from).
    k: int = 0
    # The components (or stack names) they come from, a list: --drop.components=vision,language (empty:
    # every stack the file scores).
    components: list[str] = field(default_factory=list)
    # Which method's scores in that file (default: the file's main method).
    method: str = ""
    # auto: each component is cut alone (the DTR paper): language blocks of joint-attention policies
    # (SmolVLA, pi0, pi0.5) keep their input norm and k/v projections for the action expert (keep-K/V),
    # action-expert blocks go while every language block stays (action-only), other blocks go whole;
    # keep_kv: the same, refused for stacks nothing reads K/V from; pair: whole blocks, coupled partners
    # included.
    mode: str = "auto"
    # What goes of each listed block (the paper's granularity ablation; with --drop.from, attention-only and
    # MLP-only cuts rank by that sublayer's own scores, from `vlaprune score --granularity=sublayer
    # --method=gateprobe_branch_abs`). block: the whole block; attn: only its attention; mlp: only its MLP.
    part: str = "block"
    # Shrink the hidden width of the action head's MLP-ResNet (OpenVLA-OFT: 4096 -> N, the DTR paper's head
    # cut) to this many channels (0: no width cut), keeping the channels the criterion ranks highest
    # (vlaprune.surgery.width.CRITERIA: magnitude, first, random). Alone or with block drops (blocks first).
    head_width: int = 0
    # Which head channels stay. magnitude: the largest weight norms (fc1 rows, fc2 columns and every
    # block's FFN rows and columns); first: the first N channels; random: N seeded random ones.
    head_criterion: str = "magnitude"
    # Also remove the dead compute (`vlaprune inspect` lists it): what nothing reads (the last language
    # block's attention output and MLP in SmolVLA / pi0 / pi0.5, vision blocks after OpenVLA's read-out
    # block); actions stay bit-identical. Applied first, as its own plan.
    dead: bool = False

    def __post_init__(self) -> None:
        if self.head_criterion not in CRITERIA:
            raise VlapruneError(
                f"--drop.head_criterion={self.head_criterion!r}: choose one of {', '.join(CRITERIA)}"
            )
        if self.head_width < 0:
            raise VlapruneError(f"--drop.head_width={self.head_width}: a channel count, or 0 for none")
        if self.mode not in MODES:
            raise VlapruneError(f"--drop.mode={self.mode!r}: choose one of {', '.join(MODES)}")
        if self.part not in PARTS:
            raise VlapruneError(f"--drop.part={self.part!r}: choose one of {', '.join(PARTS)}")
        if self.part != "block" and self.mode != "auto":
            raise VlapruneError(
                f"--drop.mode={self.mode} applies to whole-block drops; a sublayer drop (--drop.part="
                f"{self.part}) keeps every block in place, so leave --drop.mode out"
            )


@dataclass
class DropConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    drop: DropSpec = field(default_factory=DropSpec)
    # Name the stacks yourself (see `vlaprune inspect --help`).
    stacks: str = ""
    # Required: the folder the pruned checkpoint (weights, config, plan.json) and drop.json go to.
    output_dir: str = ""
    # select_action calls timed per model (after warm-up calls).
    latency_calls: int = 20
    # Untimed select_action calls per model before the timed ones.
    warmup_calls: int = 3

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise VlapruneError("--output_dir is required: the folder the pruned checkpoint goes to")
        if self.latency_calls < 1:
            raise VlapruneError("--latency_calls must be >= 1")


def _indices(text: str, what: str, n: int | None = None, readout: int | None = None) -> list[int]:
    """Comma-separated indices, or a protocol level (drop_half / keep_2) of a stack of n blocks (read at
    block `readout` when that is not its last: `surgery.levels`)."""
    if text.strip() in PROTOCOL_LEVELS and n is not None:
        return protocol_blocks(text.strip(), n, what, readout)
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise VlapruneError(f"{what}={text!r}: expected comma-separated block indices like 3,7") from None


def _readout(lay: Layout, key: str) -> int | None:
    """The read-out block of the stack a request key names, when the model reads it below its top."""
    named = [s for n, s in lay.stacks.items() if n == key] or [
        s for s in lay.stacks.values() if s.component == key
    ]
    return named[0].readout.index if len(named) == 1 and named[0].readout is not None else None


def _size(lay: Layout, key: str) -> int | None:
    """Blocks in the stack a request key names (a stack name, or a component with a single stack)."""
    if key in lay.stacks:
        return len(lay.stacks[key])
    named = [s for s in lay.stacks.values() if s.component == key]
    return len(named[0]) if len(named) == 1 else None


def request_from(spec: DropSpec, lay: Layout) -> dict[str, list[int]]:
    """The drop request the flags describe (explicit indices or a protocol level, or k lowest scores from a
    scores.json)."""
    req: dict[str, list[int]] = {}
    for comp in ("language", "vision", "action"):
        text = getattr(spec, comp).strip()
        several = [n for n, s in lay.stacks.items() if s.component == comp and n != comp]
        if text in PROTOCOL_LEVELS and len(several) > 1:  # OFT's two vision towers: the level cuts each
            for name in several:
                req[name] = _indices(
                    text, f"--drop.{comp} ({name})", len(lay.stacks[name]), _readout(lay, name)
                )
        elif text:
            req[comp] = _indices(text, f"--drop.{comp}", _size(lay, comp), _readout(lay, comp))
    for item in filter(None, (s.strip() for s in spec.blocks.split(";"))):
        name, eq, idx = item.partition("=")
        if not eq:
            raise VlapruneError(f"--drop.blocks item {item!r} is not NAME=i,j")
        req[name.strip()] = _indices(
            idx, f"--drop.blocks {name}", _size(lay, name.strip()), _readout(lay, name.strip())
        )
    if spec.scores:
        if req:
            raise VlapruneError("give either block indices or --drop.from, not both")
        req = _from_scores(spec, lay)
    if not req and not spec.head_width and not spec.dead:
        raise VlapruneError(
            "nothing to drop: pass --drop.language=3,7 (or vision/action/blocks), --drop.from, "
            "--drop.head_width or --drop.dead=true"
        )
    return req


def _from_scores(spec: DropSpec, lay: Layout) -> dict[str, list[int]]:
    """The blocks `surgery.select.select_blocks` picks from a scores.json: the same rule as DTR's sweep (the
    cheapest valid k-block plan of the stacks asked for, partners included)."""
    path = Path(spec.scores)
    if not path.is_file():
        raise VlapruneError(f"--drop.from {path}: no such file (write one with `vlaprune score`)")
    data = json.loads(path.read_text())
    method = spec.method or data.get("method", "")
    if method not in data.get("results", {}):
        raise VlapruneError(
            f"{path} has no scores for method {method!r} (has {', '.join(data.get('results', {}))})"
        )
    scores: dict[str, list[float]] = data["results"][method]["scores"]
    if spec.part != "block":
        scores = (data["results"][method].get("detail") or {}).get("parts", {}).get(spec.part)
        if scores is None:
            raise VlapruneError(
                f"{path} has no per-sublayer scores for {method!r}, so it cannot rank --drop.part="
                f"{spec.part}; score with --granularity=sublayer --method=gateprobe_branch_abs"
            )
    wanted = spec.components or list(scores)
    names = [n for n in scores if n in wanted or n.split(".")[0] in wanted]
    if not names:
        raise VlapruneError(f"{path} has no scores for components {wanted} (has {', '.join(scores)})")
    unknown = [n for n in names if n not in lay.stacks]
    if unknown:
        raise VlapruneError(
            f"{path} scores stacks {unknown} that this model does not have; wrong scores file?"
        )
    total = sum(len(scores[n]) for n in names)
    if not 0 < spec.k < total:
        raise VlapruneError(f"--drop.k={spec.k}: choose between 1 and {total - 1} of the {total} blocks")
    drops = select_blocks(lay, names, scores, spec.k, spec.mode, spec.part)
    if drops is None:
        raise VlapruneError(
            f"no valid plan drops {spec.k} blocks of {', '.join(names)} under this policy's coupling rules; "
            "choose another --drop.k or --drop.mode"
        )
    return drops


def _check(lay: Layout, request: dict[str, list[int]], spec: DropSpec) -> None:
    """Raise, touching nothing, if the request is not a valid plan for this model."""
    if spec.part == "block":
        resolve_drops(lay, request, spec.mode)
    else:
        resolve_sublayers(lay, request, spec.part)


def run(cfg: DropConfig) -> dict[str, Any]:
    from rich.console import Console

    console = Console(width=max(Console().width, 100))
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        raise VlapruneError(f"{out} already exists and is not empty; choose a new --output_dir or remove it")
    policy = load_policy(cfg.policy, cfg.stacks or None)
    lay = policy.layout()
    request = request_from(cfg.drop, lay)
    if request:  # refuse a bad plan before measuring anything
        _check(lay, request, cfg.drop)
    if cfg.drop.head_width:
        width = resnet_of(lay, "action").fc1.out_features
        if not 0 < cfg.drop.head_width < width:
            raise VlapruneError(
                f"--drop.head_width={cfg.drop.head_width}: choose 1..{width - 1} (the head has {width})"
            )
    dead = dead_request(lay) if cfg.drop.dead else {}
    if cfg.drop.dead and not dead:
        raise VlapruneError("--drop.dead=true: this policy has no dead compute (`vlaprune inspect` lists it)")
    for s, idx in dead.items():
        if both := sorted(set(idx) & set(request.get(s, []))):
            raise VlapruneError(
                f"{s}: block(s) {both} are dead compute that --drop.dead=true already removes; leave them "
                "out of the request"
            )
    console.print("measuring the original ...")
    before = cost(lay, cfg.latency_calls, cfg.warmup_calls)
    plans = [policy.drop_blocks(dead)] if dead else []
    if request:  # after the dead-compute plan: indices are those of the model as it is then
        _check(policy.layout(), request, cfg.drop)
        plans.append(policy.drop_blocks(request, cfg.drop.mode, cfg.drop.part))
    if cfg.drop.head_width:
        plans.append(policy.shrink_width(cfg.drop.head_width, cfg.drop.head_criterion))
    plan = plans[0] if len(plans) == 1 else None
    for p in plans:
        console.print(f"[bold]plan[/]: {p.summary()}")
    console.print("measuring the pruned model ...")
    after = cost(policy.layout(), cfg.latency_calls, cfg.warmup_calls)
    console.print(cost_table(before, after))
    report = {
        "plan": plan_to_dict(plan) if plan else [plan_to_dict(p) for p in plans],
        "cost_original": before,
        "cost_pruned": after,
        "random_weights": policy.random_weights,
    }
    saved = policy.save(out, extra_json={"cost.json": report})
    console.print(f"wrote {saved} (plan.json, cost.json, weights)")
    return report
