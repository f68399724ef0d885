"""The demo's shipped assets: a trained lerobot SmolVLA for four MetaWorld tasks, a small LeRobotDataset of
expert demonstrations, and the evaluation recorded when they were built (scripts/build_demo_assets.py).

The checkpoint records the absolute path of its tiny VLM backbone folder (SmolVLA's `vlm_model_name`, also
the tokenizer's); `load_demo_policy` points it at this installation's copy.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from torch import nn

from vlaprune.data import processors
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "metaworld4"
TASKS = ["button-press-topdown-v3", "drawer-close-v3", "window-open-v3", "button-press-v3"]


def available() -> bool:
    return (ASSETS / "policy" / "plan.json").is_file() and (
        ASSETS / "dataset" / "meta" / "info.json"
    ).is_file()


def relocated(policy_dir: Path) -> Path:
    """A view of `policy_dir` whose JSON files point at this installation's VLM folder."""
    cfg = json.loads((policy_dir / "config.json").read_text())
    old, new = cfg["vlm_model_name"], str(ASSETS / "vlm")
    if old == new:
        return policy_dir
    tmp = Path(tempfile.mkdtemp(prefix="vlaprune-demo-policy-"))
    for f in policy_dir.iterdir():
        if f.suffix == ".json":
            (tmp / f.name).write_text(f.read_text().replace(old, new))
        else:
            (tmp / f.name).symlink_to(f.resolve())
    return tmp


def export(dest: str | Path) -> Path:
    """Copy the shipped policy, its VLM folder and the dataset to `dest` (policy/, vlm/, dataset/), the policy
    pointing at dest/vlm: plain folders every command takes (`--policy.path=DEST/policy
    --dataset.root=DEST/dataset`). Written atomically; `dest` must not exist or be empty."""
    import shutil

    from vlaprune.atomic import atomic_dir

    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise VlapruneError(f"{dest} already exists and is not empty; choose a new folder")
    src = ASSETS / "policy"
    old = json.loads((src / "config.json").read_text())["vlm_model_name"]
    with atomic_dir(dest) as tmp:
        shutil.copytree(ASSETS / "vlm", tmp / "vlm")
        shutil.copytree(ASSETS / "dataset", tmp / "dataset")
        (tmp / "policy").mkdir()
        for f in src.iterdir():
            if f.suffix == ".json":
                (tmp / "policy" / f.name).write_text(f.read_text().replace(old, str(dest / "vlm")))
            else:
                shutil.copy2(f, tmp / "policy" / f.name)
    return dest


def load_demo_policy(policy_dir: str | Path | None = None) -> tuple[nn.Module, object, object]:
    """(policy module, preprocessor, postprocessor) of the shipped (or given) demo checkpoint."""
    policy_dir = Path(policy_dir) if policy_dir else ASSETS / "policy"
    if not (policy_dir / "config.json").is_file():
        raise VlapruneError(f"no demo policy at {policy_dir}; build it with scripts/build_demo_assets.py")
    path = relocated(policy_dir)
    policy = load_policy(str(path))
    pre, post = processors(policy)
    return policy.module, pre, post
