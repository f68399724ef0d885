"""Python 3.11 / CPU-torch compatibility step, run by scripts/setup.sh; idempotent, patches what is broken.

1. torchvision: the only build matching torch 2.13 is a CUDA build; on CPU torch `import torchvision` fails
   with `operator torchvision::nms does not exist` because two `register_fake` decorators are unguarded.
   Guard them (transforms and models then work; torchvision.ops kernels do not, and lerobot's policies
   do not need them). Skipped when torchvision already imports.
2. lerobot 0.6.1 uses Python-3.12-only syntax (PEP 695) in five files; rewrite it as 3.11 syntax with the
   same meaning. Skipped on Python >= 3.12.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys


def _site_file(module: str, rel: str) -> pathlib.Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / rel


def _replace(path: pathlib.Path, subs: list[tuple[str, str]]) -> bool:
    text = path.read_text()
    new = text
    for old, repl in subs:
        if old in new:
            new = new.replace(old, repl)
    if new != text:
        path.write_text(new)
        return True
    return False


def patch_torchvision() -> str:
    ok = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if ok.returncode == 0:
        return "torchvision imports: no patch"
    if "torchvision::nms" not in ok.stderr:
        return "torchvision missing or broken for another reason:\n" + ok.stderr[-500:]
    f = _site_file("torchvision", "_meta_registrations.py")
    subs = [
        (
            f'@torch.library.register_fake("torchvision::{op}")',
            f'@(torch.library.register_fake("torchvision::{op}") '
            f"if torchvision.extension._has_ops() else (lambda fn: fn))",
        )
        for op in ("nms", "qnms")
    ]
    _replace(f, subs)
    ok = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if ok.returncode != 0:
        raise SystemExit("py311_compat: torchvision still fails to import:\n" + ok.stderr[-500:])
    return "torchvision: guarded register_fake for nms/qnms"


LEROBOT_PEP695 = {
    "motors/motors_bus.py": [
        ("type NameOrID = str | int", "NameOrID = str | int"),
        ("type Value = int | float", "Value = int | float"),
    ],
    "datasets/aggregate.py": [
        ("type FeatureDict = ", "FeatureDict = "),
        ("type ChunkFile = ", "ChunkFile = "),
        ("type VideoIndexState = ", "VideoIndexState = "),
    ],
    "datasets/streaming_dataset.py": [
        (
            "class Backtrackable[T]:",
            "from typing import Generic as _G, TypeVar as _TV\nT = _TV('T')\nclass Backtrackable(_G[T]):",
        )
    ],
    "utils/io_utils.py": [
        (
            "def deserialize_json_into_object[T: JsonLike](",
            "T = __import__('typing').TypeVar('T')\ndef deserialize_json_into_object(",
        )
    ],
    "processor/pipeline.py": [
        (
            "class DataProcessorPipeline[TInput, TOutput](HubMixin):",
            "class DataProcessorPipeline(HubMixin, __import__('typing').Generic[TInput, TOutput]):",
        )
    ],
}


def patch_lerobot() -> str:
    if sys.version_info >= (3, 12):
        return "lerobot: Python >= 3.12, no patch"
    changed = []
    for rel, subs in LEROBOT_PEP695.items():
        f = _site_file("lerobot", rel)
        if f is None:
            return "lerobot not installed: no patch"
        if _replace(f, subs):
            changed.append(rel)
    return f"lerobot: rewrote PEP 695 syntax in {changed}" if changed else "lerobot: already 3.11-compatible"


if __name__ == "__main__":
    print("py311_compat:", patch_torchvision())
    print("py311_compat:", patch_lerobot())
