"""The `vlaprune` command: one subcommand per stage, flags parsed by draccus from each stage's config.

vlaprune inspect --policy.path=PATH_OR_HUB_ID [--stacks=language=model.layers,...] [--output=anatomy.json]
vlaprune demo
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from vlaprune.errors import VlapruneError


def _stage(
    module: str, config: str, rewrite: Callable[[str], str] | None = None
) -> Callable[[list[str]], Any]:
    """A subcommand: parse `config` (a dataclass in `module`) from the flags with draccus, call `module.run`.
    Imports happen on use, so `vlaprune --help` stays fast."""

    def command(args: list[str]) -> Any:
        import importlib

        import draccus

        mod = importlib.import_module(module)
        args = [_list_flags(rewrite(a) if rewrite else a) for a in args]
        _check_flags(getattr(mod, config), args)
        try:
            cfg = draccus.parse(getattr(mod, config), args=args)
        except draccus.utils.DecodingError as e:  # a nested config refused a value: show its own message
            raise _cause(e) from None
        return mod.run(cfg)

    return command


def _check_flags(config: type, args: list[str]) -> None:
    """Refuse a flag the command does not have in one line that names the nearest valid one (argparse would
    print the whole usage). Values are left to draccus."""
    import difflib

    from draccus.argparsing import ArgumentParser

    known = set(ArgumentParser(config_class=config).parser._option_string_actions)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if not flag.startswith("--") or flag in known:
            continue
        near = difflib.get_close_matches(flag, sorted(known - {"--help", "--config_path"}), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise VlapruneError(f"unknown flag {flag}{hint} (--help lists every flag)")


def _list_flags(arg: str) -> str:
    """Every list flag takes comma-separated values (--drop.language=1,3): --dataset.episodes=0,1,2 too
    (draccus's own form, [0,1,2], still works)."""
    flag, eq, value = arg.partition("=")
    if flag != "--dataset.episodes" or not eq:
        return arg
    items = [v.strip() for v in value.strip().removeprefix("[").removesuffix("]").split(",") if v.strip()]
    if not items or not all(v.isdigit() for v in items):
        raise VlapruneError(
            f"--dataset.episodes={value}: give episode indices comma-separated, e.g. --dataset.episodes=0,1,2"
        )
    return f"{flag}=[{','.join(items)}]"


def _cause(e: BaseException) -> VlapruneError:
    """The VlapruneError behind a draccus DecodingError (its one-line message), or one made from it."""
    c: BaseException | None = e
    while c is not None and not isinstance(c, VlapruneError):
        c = c.__cause__ or c.__context__
    return c if c is not None else VlapruneError(" ".join(str(e).split())[:300])


def _from_flag(arg: str) -> str:
    """`from` is a Python keyword: --drop.from=scores.json is the DropSpec field `scores`."""
    return arg.replace("--drop.from=", "--drop.scores=", 1) if arg.startswith("--drop.from=") else arg


def _report(args: list[str]) -> Any:
    from vlaprune.experiments import report

    if args and args[0] in ("-h", "--help"):
        print(REPORT_USAGE)
        return None
    if len(args) != 1 or args[0].startswith("-"):
        raise VlapruneError(
            f"{REPORT_USAGE.splitlines()[0]} (the --output_dir of `vlaprune dtr` or the demo)"
        )
    html, md = report.build(args[0])
    print(f"wrote {html} and {md}")
    return html


REPORT_USAGE = """usage: vlaprune report RUN_DIR
  RUN_DIR   a results store: the --output_dir of `vlaprune dtr` or of the demo
Writes RUN_DIR/report.html (self-contained) and RUN_DIR/report.md from the store's rows alone."""

_inspect = _stage("vlaprune.experiments.inspect", "InspectConfig")
_score = _stage("vlaprune.scoring.score", "ScoreConfig")
_drop = _stage("vlaprune.experiments.drop", "DropConfig", rewrite=_from_flag)
_recover = _stage("vlaprune.recover.train", "RecoverConfig")
_eval = _stage("vlaprune.evaluate.run", "EvalConfig")
_diverge = _stage("vlaprune.scoring.diverge", "DivergeConfig")
_prune_units = _stage("vlaprune.experiments.prune_units", "PruneUnitsConfig")
_dtr = _stage("vlaprune.experiments.dtr", "DTRConfig")
_demo = _stage("vlaprune.experiments.demo", "DemoConfig")

COMMANDS: dict[str, tuple[Callable[[list[str]], Any], str]] = {
    "inspect": (_inspect, "print a policy's anatomy (stacks, params, FLOPs, coupling) and write it as JSON"),
    "score": (_score, "rank blocks by importance (GateProbe and baselines) on calibration batches"),
    "drop": (_drop, "remove blocks for real, save the pruned checkpoint, report params / FLOPs / latency"),
    "recover": (_recover, "fine-tune a (pruned) policy under a fixed budget: full, LoRA or distillation"),
    "eval": (_eval, "offline loss / action error, closed-loop success with CIs, language and vision probes"),
    "diverge": (
        _diverge,
        "where VLM-to-VLA adaptation moved the weights (streamed dW per module / layer / channel)",
    ),
    "prune-units": (
        _prune_units,
        "prune FFN channels / attention heads across modules, no recovery, vs baselines",
    ),
    "dtr": (
        _dtr,
        "the Drop-Then-Recovery sweep (score, drop, evaluate, recover, evaluate) into a results store",
    ),
    "report": (_report, "build the HTML / Markdown report of a DTR run from its results store"),
    "demo": (_demo, "the main job: a reduced DTR sweep on a shipped MetaWorld SmolVLA, then its report"),
}


EPISODE_COMMANDS = ("eval", "dtr", "prune-units")  # run closed-loop episodes when given --env.type


def wait_policy(cmd: str, args: list[str]) -> str | None:
    """OMP_WAIT_POLICY for a command: PASSIVE (idle OpenMP threads sleep) where closed-loop episodes run
    (the demo; eval / dtr / prune-units with --env.type), None (libgomp's default: spin a while, then
    sleep) for the rest. Why: a policy call alternates with simulator steps on the same cores, and two
    evaluations side by side slowed each other 8x with spinning threads, 1.2x with sleeping ones
    (benchmarks/parallel_eval.py); training and scoring alone run 1.7x faster with spinning threads
    (benchmarks/recover_throughput.py: 0.61-0.67x lerobot-train under PASSIVE). libgomp reads the variable
    when it loads, with torch, so it is set before anything imports torch."""
    closed_loop = any(a.startswith("--env.type=") and a != "--env.type=" for a in args)
    return "PASSIVE" if cmd == "demo" or (cmd in EPISODE_COMMANDS and closed_loop) else None


def usage() -> str:
    lines = ["usage: vlaprune COMMAND [--flag=value ...]   (vlaprune COMMAND --help for its flags)", ""]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    cmd, args = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"vlaprune: error: unknown command {cmd!r}\n{usage()}", file=sys.stderr)
        return 2
    if policy := wait_policy(cmd, args):
        os.environ.setdefault("OMP_WAIT_POLICY", policy)  # yours wins when you set it, even empty
    logging.basicConfig(level=os.environ.get("VLAPRUNE_LOG", "WARNING"))
    import vlaprune.tiny  # noqa: F401  (registers the built-in tiny models: --policy.path=tiny:NAME)

    try:
        COMMANDS[cmd][0](args)
    except VlapruneError as e:
        print(f"vlaprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlaprune: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # draccus after --help (0) or a flag it cannot parse (2)
        return e.code if isinstance(e.code, int) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
