"""mkdocs hook: `<!-- modules -->` in a page becomes the list of src/vlaprune's folders and modules with the
first line of each one's docstring, read from the source at build time (ast; nothing is imported), so the
architecture page stays true when modules move."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "vlaprune"
MARK = "<!-- modules -->"


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def listing(folder: Path = SRC, depth: int = 0) -> list[str]:
    rows = []
    for p in sorted(folder.iterdir(), key=lambda p: (p.is_dir(), p.name)):
        if p.name.startswith(("_", ".")) or p.name in {"assets", "oft_remote"}:
            continue
        indent = "    " * depth
        if p.is_dir() and (p / "__init__.py").exists():
            rows.append(f"{indent}- **`{p.name}/`** {summary(p / '__init__.py')}")
            rows += listing(p, depth + 1)
        elif p.suffix == ".py":
            rows.append(f"{indent}- `{p.name}` {summary(p)}")
    return rows


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARK not in markdown:
        return markdown
    return markdown.replace(MARK, "\n".join(listing()) + "\n")
