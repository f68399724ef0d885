"""The documentation: the site builds with `mkdocs build --strict` (no broken link or anchor), its home page
renders in headless Chromium, and the README stays a short front door whose links all land."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.chromium import assert_shows_text, screenshot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built into a tmp folder, strictly (a warning, e.g. a broken link or anchor, fails)."""
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail(
            "mkdocs / mkdocs-material are not installed: run scripts/setup.sh (it installs the dev extra)"
        )
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_site_builds_strictly_with_every_page(site):
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    assert {"index.md", "first-steps.md", "benchmarks.md", "architecture.md"} <= {str(p) for p in pages}
    for page in pages:
        built = site / ("index.html" if page.name == "index.md" else page.with_suffix("") / "index.html")
        assert built.is_file(), page


def test_architecture_lists_the_modules_of_the_source(site):
    html = (site / "architecture" / "index.html").read_text()
    folders = [p.name for p in (ROOT / "src" / "vlaprune").iterdir() if (p / "__init__.py").is_file()]
    assert folders and all(f"<code>{name}/</code>" in html for name in folders), folders
    assert "<code>cli.py</code>" in html and "<!-- modules -->" not in html


def test_home_page_renders_in_headless_chromium(site, tmp_path):
    img = screenshot(site / "index.html", tmp_path, (1280, 1000))
    assert_shows_text(img, (1280, 1000))
    header = np.asarray(img)[:40].reshape(-1, 3).mean(0)
    assert header[2] > header[0] + 40  # material's blue header bar: the theme's CSS loaded


def test_readme_is_a_short_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "bash scripts/setup.sh && .venv/bin/vlaprune demo" in text and ".venv/bin/python -m pytest" in text
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10 and all((ROOT / link).is_file() for link in links), links
    commands = re.findall(r"^\| `vlaprune ([\w-]+)", text, re.M)
    import vlaprune.cli

    assert set(commands) == set(vlaprune.cli.commands()), commands
