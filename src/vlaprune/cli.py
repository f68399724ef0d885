"""The `vlaprune` command: one subcommand per stage, flags parsed by draccus from each stage's config.

    vlaprune COMMAND --flag=value ...     (vlaprune COMMAND --help: its flags, and every value of a flag
    vlaprune --verbose COMMAND ...         that takes one of a fixed set; --verbose: third-party output too)

A subcommand is a stage's `run(config)`: its --help is the stage module's docstring, then the config's
flags with their comments; a flag with a fixed set of values lists them one per line, from the registry the
stage validates against (scoring methods, unit criteria, levels, drop modes, ...), each described by its
function's docstring or by the `value: description` clauses of the field's comment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from draccus.help_formatter import SimpleHelpFormatter

from vlaprune.errors import VlapruneError

# Values checked inline by their configs' __post_init__ (the rest come from the stages' registries)
TRAINABLE = ("preset", "all")
PRECISIONS = ("auto", "no", "bf16", "fp16")
REMOVALS = ("real", "masked")
HEADS = ("groups", "query")


@dataclass(frozen=True)
class Command:
    """A subcommand: the stage's run(config) and the config draccus parses (None: `report`, positional).
    `values` maps each fixed-value flag to the registry it is checked against."""

    run: Callable[..., Any]
    config: type | None = None
    values: Mapping[str, Iterable[str]] = field(default_factory=dict)
    rewrite: Callable[[str], str] | None = None

    @property
    def doc(self) -> str:
        return textwrap.dedent(sys.modules[self.run.__module__].__doc__ or "").strip()

    @property
    def summary(self) -> str:
        """The docstring's first sentence, without its "`vlaprune NAME ...`:" prefix."""
        first = " ".join(self.doc.split("\n\n")[0].split())
        return _sentence(re.sub(r"^`vlaprune [\w-]+[^`]*`:\s*", "", first))


def commands() -> dict[str, Command]:
    """Every subcommand. Imports the stages, and with them torch: call it after `wait_policy` is applied."""
    from vlaprune.evaluate import run as evaluate
    from vlaprune.experiments import demo, drop, dtr, inspect, prune_units, report
    from vlaprune.recover import train
    from vlaprune.scoring import diverge, score

    values = _values()
    return {
        "inspect": Command(inspect.run, inspect.InspectConfig),
        "score": Command(score.run, score.ScoreConfig, values["score"]),
        "drop": Command(drop.run, drop.DropConfig, values["drop"], rewrite=_from_flag),
        "recover": Command(train.run, train.RecoverConfig, values["recover"]),
        "eval": Command(evaluate.run, evaluate.EvalConfig, values["eval"]),
        "diverge": Command(diverge.run, diverge.DivergeConfig, values["diverge"]),
        "prune-units": Command(prune_units.run, prune_units.PruneUnitsConfig, values["prune-units"]),
        "dtr": Command(dtr.run, dtr.DTRConfig, values["dtr"]),
        "report": Command(report.build),
        "demo": Command(demo.run, demo.DemoConfig, values["demo"]),
    }


def _values() -> dict[str, dict[str, Iterable[str]]]:
    """Per command, its fixed-value flags and the registry each is checked against (their --help lists)."""
    from vlaprune.configs import ENV_TYPES
    from vlaprune.recover.budget import BUDGETS
    from vlaprune.recover.modes import MODES as RECOVER_MODES
    from vlaprune.scoring import METHODS
    from vlaprune.scoring.divergence import PRESETS
    from vlaprune.scoring.gates import GRANULARITIES
    from vlaprune.scoring.units import CRITERIA
    from vlaprune.surgery.levels import PROTOCOL_LEVELS
    from vlaprune.surgery.plan import MODES as DROP_MODES
    from vlaprune.surgery.sublayers import PARTS
    from vlaprune.surgery.width import CRITERIA as WIDTH_CRITERIA

    levels = ("FRACTION", "N", "all-but-N", *PROTOCOL_LEVELS)  # surgery/levels.py: ranked, then protocol
    maps = ("auto", *PRESETS)
    env = {"--env.type": ENV_TYPES}
    return {
        "score": {"--method": METHODS, "--granularity": GRANULARITIES},
        "drop": {
            "--drop.language": ("INDICES", *PROTOCOL_LEVELS),
            "--drop.mode": DROP_MODES,
            "--drop.part": PARTS,
            "--drop.head_criterion": WIDTH_CRITERIA,
        },
        "recover": {"--mode": RECOVER_MODES, "--trainable": TRAINABLE, "--mixed_precision": PRECISIONS},
        "eval": env,
        "diverge": {"--map": maps},
        "prune-units": {
            "--criterion": CRITERIA,
            "--removal": REMOVALS,
            "--heads": HEADS,
            "--map": maps,
            **env,
        },
        "dtr": {
            "--sweep.levels": levels,
            "--sweep.methods": METHODS,
            "--sweep.mode": DROP_MODES,
            "--sweep.parts": PARTS,
            "--recover.kind": BUDGETS,
            "--recover.trainable": TRAINABLE,
            **env,
        },
        "demo": {"--levels": levels, "--methods": METHODS},
    }


# --- help -------------------------------------------------------------------------------------------------


def _sentence(text: str, limit: int = 120) -> str:
    """The first sentence of `text`; past `limit` characters, cut at its last clause boundary before it."""
    text = re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", text.strip(), maxsplit=1)[0].rstrip(".")
    if len(text) <= limit:
        return text
    cut = max(text.rfind(sep, 0, limit) for sep in (";", ",", " ("))
    return text[: cut if cut > limit // 2 else limit].rstrip(" ,;") + " ..."


def clauses(text: str, values: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Split a field comment into (intro, {value: description}) at each "value:" it contains, e.g.
    "How blocks go. auto: ...; keep_kv: ...; pair: ..." (values the text does not name are left out)."""
    starts = sorted(
        (m.start(), m.end(), v)
        for v in values
        for m in [re.search(rf"(?<![\w.-]){re.escape(v)}:\s", text)]
        if m
    )
    if not starts:
        return text.strip(), {}
    out = {}
    for (_, end, v), nxt in zip(starts, [*starts[1:], (len(text), 0, "")]):
        out[v] = text[end : nxt[0]].strip(" ;,.\n")
    return text[: starts[0][0]].strip(" ;,:\n"), out


def describe(values: Iterable[str], comment: str) -> tuple[str, list[tuple[str, str]]]:
    """(intro, [(value, one-line description)]) for a fixed-value flag: a registry entry's docstring when it
    has one, else the value's clause in the field comment."""
    intro, said = clauses(comment, values)
    rows = []
    for v in values:
        entry = values.get(v) if isinstance(values, Mapping) else None
        doc = (getattr(entry, "__doc__", None) or "") if callable(entry) else ""
        first = " ".join(doc.split("\n\n")[0].split())
        rows.append((v, _sentence(first) if first else said.get(v, "")))
    return intro, rows


class HelpFormatter(SimpleHelpFormatter):
    """draccus's formatter, keeping the value lines of a fixed-value flag one per line."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines = text.split("\n")
        rows = [line.split("\t") for line in lines if "\t" in line]  # (value, description)
        out = super()._split_lines(" ".join(line for line in lines if "\t" not in line), width)
        pad = min(max((len(v) for v, _ in rows), default=0) + 2, 18)
        for value, desc in rows:
            wrapped = textwrap.wrap(desc, max(30, width - pad - 2)) or [""]
            if len(value) + 2 > pad:  # a long value: its description starts on the next line
                out += ["  " + value, *("  " + " " * pad + w for w in wrapped)]
            else:
                out += [f"  {value:<{pad}}{wrapped[0]}", *("  " + " " * pad + w for w in wrapped[1:])]
        return out


def parser(name: str, cmd: Command):
    """The draccus parser of a subcommand, its help built from the stage's docstring and registries."""
    from draccus.argparsing import ArgumentParser

    p = ArgumentParser(
        config_class=cmd.config, prog=f"vlaprune {name}", description=cmd.doc, formatter_class=HelpFormatter
    )
    actions = p.parser._option_string_actions
    for flag, values in cmd.values.items():
        action = actions[flag]
        intro, rows = describe(values, " ".join((action.help or "").split()))
        intro = intro.rstrip(".")
        head = f"{intro} (default: %(default)s); one of:" if intro else "One of (default: %(default)s):"
        action.help = "\n".join([head, *(f"{v}\t{d}".replace("%", "%%") for v, d in rows)])
    listed: set[str] = set()  # draccus adds a nested group's config-file flag twice: list it once
    for group in p.parser._action_groups:
        keep = []
        for a in group._group_actions:
            if not set(a.option_strings) & listed:
                keep.append(a)
                listed.update(a.option_strings)
        group._group_actions[:] = keep
    return p


def usage(cmds: Mapping[str, Command]) -> str:
    lines = [
        "usage: vlaprune [--verbose] COMMAND [--flag=value ...]   (vlaprune COMMAND --help: its flags)",
        "",
    ]
    for name, cmd in cmds.items():
        wrapped = textwrap.wrap(cmd.summary, 88)
        lines += [f"  {name:<12}{wrapped[0]}", *(" " * 14 + w for w in wrapped[1:])]
    lines += [
        "",
        "  --verbose   also show third-party output: lerobot's prints and logs, transformers / datasets",
        "              progress bars, simulator warnings (hidden by default; vlaprune's own progress stays)",
    ]
    return "\n".join(lines)


# --- flags ------------------------------------------------------------------------------------------------


# Old spellings of renamed flags: the error names the new one (difflib might pick another near name)
RENAMED = {
    "--batches": "--calibration.batches",
    "--batch_size": "--calibration.batch_size",
    "--calib_batches": "--calibration.batches",
    "--calib_batch_size": "--calibration.batch_size",
}


def _check_flags(p, args: list[str]) -> None:
    """Refuse a flag the command does not have in one line that names the nearest valid one (argparse would
    print the whole usage). Values are left to draccus."""
    import difflib

    known = set(p.parser._option_string_actions)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if not flag.startswith("--") or flag in known:
            continue
        near = [RENAMED[flag]] if RENAMED.get(flag) in known else []
        near = near or difflib.get_close_matches(
            flag, sorted(known - {"--help", "--config_path"}), n=1, cutoff=0.5
        )
        hint = f"; did you mean {near[0]}?" if near else ""
        raise VlapruneError(f"unknown flag {flag}{hint} (--help lists every flag)")


def list_flags(config: type, prefix: str = "--") -> dict[str, type]:
    """{flag: item type} of every list-typed field (`list[str]`, `list[int]`, optionally None) of `config`
    and of the configs nested in it."""
    out: dict[str, type] = {}
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        if dataclasses.is_dataclass(kind):
            out |= list_flags(kind, f"{prefix}{f.name}.")
        elif typing.get_origin(kind) is list:
            out[f"{prefix}{f.name}"] = (typing.get_args(kind) or (str,))[0]
    return out


def _list_flags(arg: str, items: Mapping[str, type]) -> str:
    """A list flag (`items`: flag -> item type) takes comma-separated values, --sweep.levels=drop_half,0.5,
    or draccus's own form, --sweep.levels='[drop_half,0.5]'; an empty value is the empty list. Comma values
    go to draccus as a JSON list of the strings as typed (a level "0.50" stays "0.50"); integers are checked
    here, so a bad one is a one-line error that shows the form."""
    flag, eq, value = arg.partition("=")
    kind = items.get(flag)
    if kind is None or not eq:
        return arg
    text = value.strip()
    if text.startswith("[") and kind is not int:
        return arg  # draccus's own form: draccus parses it (quoted items may hold commas)
    parts = [v.strip() for v in text.removeprefix("[").removesuffix("]").split(",") if v.strip()]
    if kind is int:
        if not all(re.fullmatch(r"-?\d+", v) for v in parts):
            raise VlapruneError(f"{flag}={value}: give integers comma-separated, e.g. {flag}=0,1,2")
        return f"{flag}=[{','.join(parts)}]"
    return f"{flag}={json.dumps(parts)}"


def _cause(e: BaseException) -> VlapruneError:
    """The VlapruneError behind a draccus DecodingError (its one-line message), or one made from it."""
    c: BaseException | None = e
    while c is not None and not isinstance(c, VlapruneError):
        c = c.__cause__ or c.__context__
    return c if c is not None else VlapruneError(" ".join(str(e).split())[:300])


def _from_flag(arg: str) -> str:
    """`from` is a Python keyword: --drop.from=scores.json is the DropSpec field `scores`."""
    return arg.replace("--drop.from=", "--drop.scores=", 1) if arg.startswith("--drop.from=") else arg


def parse(name: str, cmd: Command, args: list[str]) -> Any:
    """The command's config from its flags (draccus); --help prints the help and exits (SystemExit 0)."""
    import draccus

    items = list_flags(cmd.config)
    args = [_list_flags(cmd.rewrite(a) if cmd.rewrite else a, items) for a in args]
    p = parser(name, cmd)
    _check_flags(p, args)
    try:
        return p.parse_args(args)
    except draccus.utils.DecodingError as e:  # a nested config refused a value: show its own message
        raise _cause(e) from None


def _report(cmd: Command, args: list[str]) -> Any:
    usage_line = "usage: vlaprune report RUN_DIR"
    if args and args[0] in ("-h", "--help"):
        print(f"{usage_line}\n\n{cmd.doc}")
        return None
    if len(args) != 1 or args[0].startswith("-"):
        raise VlapruneError(f"{usage_line} (the --output_dir of `vlaprune dtr` or the demo)")
    html, md = cmd.run(args[0])
    print(f"wrote {html} and {md}")
    return html


# --- main -------------------------------------------------------------------------------------------------

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


def _verbose(argv: list[str]) -> tuple[bool, list[str]]:
    """(--verbose given, argv without it): a global flag, before or after the command."""
    flags = {"--verbose", "--verbose=true", "--verbose=True"}
    rest = [a for a in argv if a not in flags and a not in ("--verbose=false", "--verbose=False")]
    return any(a in flags for a in argv), rest


def main(argv: list[str] | None = None) -> int:
    verbose, argv = _verbose(sys.argv[1:] if argv is None else argv)
    name, args = (argv[0], argv[1:]) if argv else ("", [])
    if policy := wait_policy(name, args):
        os.environ.setdefault("OMP_WAIT_POLICY", policy)  # yours wins when you set it, even empty
    logging.basicConfig(level=os.environ.get("VLAPRUNE_LOG", "WARNING"))
    cmds = commands()
    if not argv or name in {"-h", "--help"}:
        print(usage(cmds))
        return 0
    if name not in cmds:
        print(f"vlaprune: error: unknown command {name!r}\n{usage(cmds)}", file=sys.stderr)
        return 2
    import vlaprune.tiny  # noqa: F401  (registers the built-in tiny models: --policy.path=tiny:NAME)
    from vlaprune.quiet import quiet

    cmd = cmds[name]
    try:
        with contextlib.nullcontext() if verbose else quiet():  # config checks may build envs: inside
            if cmd.config is None:
                _report(cmd, args)
            else:
                cmd.run(parse(name, cmd, args))
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
