"""Stages read top to bottom: no function in src/ over MAX_LINES lines, none with more than MAX_POSITIONAL
positional parameters (group them in a small dataclass, or make the rest keyword-only). Read from the source
(ast). `tiny/oft_remote/` is exempt: it is OFT's own model code, kept as OFT wrote it.

KNOWN lists the functions that are still too long or take too many positional arguments (issue 26; empty since
2026-12-07): the list
may only shrink. A new offender fails, and so does a listed one that has been fixed (take it off the list).
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vlaprune"
EXEMPT = (SRC / "tiny" / "oft_remote",)
MAX_LINES, MAX_POSITIONAL = 60, 6

KNOWN: set[str] = set()


def positional(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = [*fn.args.posonlyargs, *fn.args.args]
    return len(args) - (1 if args and args[0].arg in ("self", "cls") else 0)


def offenders() -> dict[str, str]:
    """{'path:function': why} for every function over the limits."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        if any(path.is_relative_to(e) for e in EXEMPT):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines, n_pos = node.end_lineno - node.lineno + 1, positional(node)
            why = [f"{lines} lines"] * (lines > MAX_LINES) + [f"{n_pos} positional"] * (
                n_pos > MAX_POSITIONAL
            )
            if why:
                out[f"{path.relative_to(SRC).as_posix()}:{node.name}"] = (
                    f"line {node.lineno}: {', '.join(why)}"
                )
    return out


def test_no_new_long_functions_or_long_argument_lists():
    new = {k: v for k, v in offenders().items() if k not in KNOWN}
    assert not new, (
        f"functions over {MAX_LINES} lines or {MAX_POSITIONAL} positional parameters (split them; group "
        "arguments in a small dataclass or make them keyword-only):\n"
        + "\n".join(f"  {k} ({v})" for k, v in new.items())
    )


def test_the_known_list_only_shrinks():
    fixed = sorted(KNOWN - set(offenders()))
    assert not fixed, f"fixed, take them off KNOWN in {Path(__file__).name}: {fixed}"
