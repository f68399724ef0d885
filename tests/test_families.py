"""No family branch outside adapters/, read from the source (ast; nothing is imported): every stage after
the adapters asks the family table (`adapters.FAMILIES`) or the Layout, never the family itself. Outside
src/vlaprune/adapters/ the checks refuse

- `isinstance(x, C)` with C a class of a family (defined in a family folder, or lerobot's policy classes),
- imports of a family module (`vlaprune.adapters.<family>...`, `lerobot.policies.<family>...`),
- comparisons with a family name (`== "smolvla"`, `in ("pi0", "pi05")`, `match` cases),
- tuple / list / set constants holding a family name (`CHUNKED = ("smolvla", "pi0")`: a branch to come).

`vlaprune.tiny` is exempt: it builds tiny instances of each family's real classes (the test fixtures).
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vlaprune"
ADAPTERS = SRC / "adapters"
FAMILY_FOLDERS = ("smolvla", "pi", "openvla", "hf")
FAMILY_NAMES = {"smolvla", "pi0", "pi05", "openvla", "oft", "hf"}
LEROBOT_CLASSES = {"SmolVLAPolicy", "SmolVLAConfig", "PI0Policy", "PI0Config", "PI05Policy", "PI05Config"}
EXEMPT = (ADAPTERS, SRC / "tiny")


def family_classes() -> set[str]:
    out = set(LEROBOT_CLASSES)
    for folder in FAMILY_FOLDERS:
        for path in (ADAPTERS / folder).rglob("*.py"):
            out |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
    return out


def _names(node: ast.AST) -> list[str]:
    """The class names an isinstance() second argument names (a name, an attribute or a tuple of them)."""
    if isinstance(node, ast.Tuple):
        return [n for e in node.elts for n in _names(e)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in _strings(e)]
    return []


def _family_module(name: str) -> bool:
    parts = name.split(".")
    ours = parts[:2] == ["vlaprune", "adapters"] and len(parts) > 2 and parts[2] in FAMILY_FOLDERS
    theirs = (
        parts[:2] == ["lerobot", "policies"] and len(parts) > 2 and parts[2] in FAMILY_NAMES | {"pi0", "pi05"}
    )
    return ours or theirs


def branches(path: Path, text: str | None = None, classes: set[str] | None = None) -> list[str]:
    """Where `path` (or `text` standing in for its source) tests a family: 'file:line what'."""
    classes = family_classes() if classes is None else classes
    where = path.relative_to(SRC.parent)
    out = []
    tree = ast.parse(path.read_text() if text is None else text)
    compared = {id(c) for n in ast.walk(tree) if isinstance(n, ast.Compare) for c in [n.left, *n.comparators]}
    for node in ast.walk(tree):
        what = None
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "isinstance"
            and len(node.args) == 2
        ):
            hit = [n for n in _names(node.args[1]) if n in classes]
            what = f"isinstance(..., {', '.join(hit)})" if hit else None
        elif isinstance(node, ast.Import):
            hit = [a.name for a in node.names if _family_module(a.name)]
            what = f"import {', '.join(hit)}" if hit else None
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            hit = [m for m in mods if _family_module(m)]
            what = f"from {node.module} import ..." if hit else None
        elif isinstance(node, ast.Compare):
            hit = [s for c in [node.left, *node.comparators] for s in _strings(c) if s in FAMILY_NAMES]
            what = f"compares with {', '.join(map(repr, hit))}" if hit else None
        elif isinstance(node, ast.Tuple | ast.List | ast.Set) and id(node) not in compared:
            hit = [s for s in _strings(node) if s in FAMILY_NAMES]
            what = f"constant {', '.join(map(repr, hit))}" if hit else None
        elif isinstance(node, ast.match_case):
            hit = [s for s in _strings(getattr(node.pattern, "value", None) or ast.Constant(None))]
            hit = [s for s in hit if s in FAMILY_NAMES]
            what = f"case {', '.join(map(repr, hit))}" if hit else None
        if what:
            out.append(f"{where}:{getattr(node, 'lineno', None) or node.pattern.lineno} {what}")
    return out


def sources() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if not any(p.is_relative_to(e) for e in EXEMPT)]


def test_no_family_branch_outside_adapters():
    classes = family_classes()
    found = [b for p in sources() for b in branches(p, classes=classes)]
    assert found == [], "family branches outside adapters/ (ask adapters.FAMILIES instead):\n" + "\n".join(
        found
    )


def test_the_family_classes_are_found():
    assert {"OpenVLAPolicy", "SmolVLAPolicy", "L1RegressionActionHead"} <= family_classes()


@pytest.mark.parametrize(
    "line",
    [
        "from vlaprune.adapters.openvla.policy import OpenVLAPolicy",
        "import vlaprune.adapters.smolvla.layout",
        "from vlaprune.adapters import openvla",
        "from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy",
        "def f(m):\n    return isinstance(m, OpenVLAPolicy)",
        "def f(m):\n    return isinstance(m, (int, mod.SmolVLAPolicy))",
        "def f(kind):\n    return kind == 'smolvla'",
        "def f(kind):\n    return kind in ('pi0', 'pi05')",
        "def f(cfg):\n    return 'openvla' != cfg.type",
        "def f(kind):\n    match kind:\n        case 'hf':\n            return 1",
        "CHUNKED = ('smolvla', 'pi0', 'pi05')",
        "def f(kind, chunked=frozenset({'pi0'})):\n    return kind in chunked",
        "NAMES = ['openvla', 'other']",
    ],
)
def test_the_check_catches_a_family_branch(line):
    path = SRC / "data.py"
    assert branches(path, path.read_text() + "\n\n" + line + "\n")


def test_the_family_table_has_every_family():
    from vlaprune.adapters import FAMILIES

    assert FAMILY_NAMES - {"oft"} <= set(FAMILIES)
    for name in FAMILY_NAMES - {"oft"}:
        assert FAMILIES[name].layout is not None and FAMILIES[name].folder.kind


def test_chunk_queues_come_from_the_family_table():
    """Closed loop runs whole chunks per env (evaluate/schedule.py) for exactly the families whose lerobot
    select_action queues predict_action_chunk."""
    from vlaprune.adapters import FAMILIES

    assert {n for n, f in FAMILIES.items() if f.chunked} == {"smolvla", "pi0", "pi05"}
