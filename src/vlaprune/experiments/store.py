"""The results store: one JSON file per row, written atomically, safe for many concurrent writers.

    store = Store("runs/dtr")            # runs/dtr/rows/<row id>.json
    if not store.has(row_id): store.put(row_id, {...})

A row id is a hash of what the row measures (its spec: the plan, seed and budget and every setting that
changes the numbers, see `experiments/dtr.settings`), so a rerun under the same settings skips finished
rows, a rerun under other settings measures new ones, and separate processes or cluster jobs (one job per
row, see docs/commands/dtr.md) can share one store folder without locks: each row is its own file, written
to a temporary name and renamed into place. Every row carries the config hash,
seed, package version and git sha. Reports read only the store.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from vlaprune import __version__
from vlaprune.atomic import write_json_atomic


def row_id(spec: dict[str, Any]) -> str:
    """A stable 16-hex-digit id of a row's spec (sorted JSON)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Store:
    """A folder of rows. Rows are dicts with at least `kind` and `spec`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.rows_dir = self.root / "rows"

    def path(self, rid: str) -> Path:
        return self.rows_dir / f"{rid}.json"

    def has(self, rid: str, spec: dict[str, Any] | None = None) -> bool:
        """Whether row `rid` is finished; with `spec`, only if it was measured under exactly that spec (a row
        written under other settings, or by code that named its settings differently, is measured again)."""
        if not self.path(rid).is_file():
            return False
        if spec is None:
            return True
        try:
            saved = self.get(rid).get("spec")
        except json.JSONDecodeError:
            return False
        return saved == json.loads(json.dumps(spec, default=str))

    def get(self, rid: str) -> dict[str, Any]:
        return json.loads(self.path(rid).read_text())

    def put(
        self, rid: str, row: dict[str, Any], config_hash: str = "", seed: int | None = None
    ) -> dict[str, Any]:
        row = {
            **row,
            "id": rid,
            "config_hash": config_hash,
            "seed": seed,
            "vlaprune_version": __version__,
            "git_sha": git_sha(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json_atomic(self.path(rid), row)
        return row

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.rows_dir.is_dir():
            return []
        out = []
        for f in sorted(self.rows_dir.glob("*.json")):
            try:
                row = json.loads(f.read_text())
            except json.JSONDecodeError:  # cannot happen with atomic writes; skip rather than fail a report
                continue
            if kind is None or row.get("kind") == kind:
                out.append(row)
        return out
