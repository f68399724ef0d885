"""The code base stays ruff clean (part of the default test run, so CI enforces it)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    venv_ruff = Path(sys.executable).parent / "ruff"  # the pinned dev extra, not whatever is on PATH
    ruff = str(venv_ruff) if venv_ruff.exists() else shutil.which("ruff") or str(venv_ruff)
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: run scripts/setup.sh (it installs the dev extra)")
    dirs = [d for d in ("src", "tests", "benchmarks", "scripts") if (ROOT / d).is_dir()]
    res = subprocess.run([ruff, "check", *dirs], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
