"""Headless Chromium for the tests that check a built page (the docs site, the DTR report): one screenshot
call, one check that a screenshot shows a page of text. scripts/setup.sh installs Chromium, so a missing one
fails (one line naming the fix) rather than skipping the check."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


def screenshot(page: Path, tmp_path: Path, size: tuple[int, int]):
    """The PIL image (RGB) of local file `page` rendered in a `size` = (width, height) window."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (it installs the apt package chromium)")
    shot = tmp_path / "screenshot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--screenshot={shot}",
            f"--window-size={size[0]},{size[1]}",
            f"file://{page}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    return Image.open(shot).convert("RGB")


def assert_shows_text(img, size: tuple[int, int]) -> None:
    """`img` is `size` and shows dark text on a light page: not blank, not an error page of one colour."""
    grey = img.convert("L")
    lo, hi = grey.getextrema()
    assert img.size == size and hi - lo > 100  # text (and figures), not a blank page
    dark = float((np.asarray(grey) < 128).mean())
    assert 0.005 < dark < 0.5
