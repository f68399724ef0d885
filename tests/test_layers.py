"""The package's import graph, read from the source (ast; nothing is imported): no cycles, and every stage
imports only itself and earlier stages. The order (also on the docs architecture page):

    core (errors, atomic, configs, quiet) < adapters < surgery < policy < tiny < data < scoring < recover
        < evaluate < experiments < cli

and nothing but the CLI imports `vlaprune.tiny` (the tiny models register themselves with the loader).
Imports inside functions count: dodging a cycle with a local import is still a cycle.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [
    ("vlaprune", "vlaprune.errors", "vlaprune.atomic", "vlaprune.configs", "vlaprune.quiet"),
    ("vlaprune.adapters",),
    ("vlaprune.surgery",),
    ("vlaprune.policy",),
    ("vlaprune.tiny",),
    ("vlaprune.data",),
    ("vlaprune.scoring",),
    ("vlaprune.recover",),
    ("vlaprune.evaluate",),
    ("vlaprune.experiments",),
    ("vlaprune.cli",),
]


def layer(module: str) -> int:
    """Index in LAYERS of the longest prefix that names `module` (a module or a package's submodule)."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or (module.startswith(name + ".") and name != "vlaprune"):
                if best is None or len(name) > best[1]:
                    best = (i, len(name))
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, text: str | None = None) -> set[str]:
    """vlaprune modules `path` (or `text` standing in for its source) imports anywhere in its body
    (`from pkg import name` counts as pkg.name when that is a module, else pkg)."""
    me = module_name(path)
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vlaprune")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("vlaprune"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                exists = (SRC / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    SRC / Path(*sub.split(".")) / "__init__.py"
                ).is_file()
                out.add(sub if exists else mod)
    out.discard(me)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted((SRC / "vlaprune").rglob("*.py"))}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                found.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in g.items():
        for d in deps:
            if layer(d) > layer(m):
                bad.append(f"{m} (layer {layer(m)}) imports later {d} (layer {layer(d)})")
            if d.startswith("vlaprune.tiny") and not m.startswith(("vlaprune.tiny", "vlaprune.cli")):
                bad.append(f"{m} imports the tiny test models ({d}); register with the loader instead")
    return bad


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_stages_import_only_earlier_stages():
    assert violations(graph()) == []


def test_every_module_has_a_layer():
    for m in graph():
        layer(m)


@pytest.mark.parametrize(
    "module, target, why",
    [
        ("vlaprune.adapters.load", "vlaprune.surgery.checkpoint", "later"),
        ("vlaprune.scoring.units", "vlaprune.experiments.prune_units", "later"),
        ("vlaprune.data", "vlaprune.tiny.hub", "tiny"),
        ("vlaprune.surgery.plan", "vlaprune.surgery.checkpoint", "cycle"),
    ],
)
def test_the_checks_catch_an_import_added_back(module, target, why):
    """The checks must fail if someone adds such an import back, even inside a function."""
    src = (SRC / Path(*module.split("."))).with_suffix(".py")
    g = graph()
    g[module] = imports(src, src.read_text() + f"\n\ndef _added():\n    import {target}\n")
    assert target in g[module]
    if why == "cycle":
        assert cycles(g)
    else:
        assert any(v.startswith(module) for v in violations(g))
