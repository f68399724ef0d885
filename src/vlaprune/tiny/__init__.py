"""Tiny random-weight instances of the real policy and model classes, built offline in seconds.

Used by the tests and by `--policy.path=tiny:<name>` (the CLI imports this package, which registers the
names with the loader: `vlaprune.adapters.load.BUILDERS`). Same classes users load from the hub (lerobot
SmolVLAPolicy / PI0Policy / PI05Policy, transformers models), just small, with non-trivial random weights.
No other part of vlaprune imports this package.
"""

from __future__ import annotations

import tempfile
from typing import Any

from vlaprune.adapters.load import Source, register_builder, source_of


def _smolvla(config: Any = None, **kw: Any) -> Source:
    """A tiny SmolVLA (no rebuild config needed: its lerobot config names its VLM folder)."""
    from vlaprune.tiny.smolvla import tiny_smolvla, write_tiny_smolvlm

    vlm = write_tiny_smolvlm(tempfile.mkdtemp(prefix="vlaprune-tiny-smolvlm-"))
    return Source(tiny_smolvla(vlm, **kw), "lerobot")


def _pi(kind: str):
    def build(config: Any = None, **kw: Any) -> Source:
        from vlaprune.tiny.pi import tiny_pi

        return source_of(tiny_pi(kind, config=config, **kw))

    return build


def _hf(name: str):
    def build(config: Any = None, **kw: Any) -> Source:
        from vlaprune.tiny import hf

        model = hf.tiny_siglip() if name == "siglip" else hf.tiny_decoder_lm(name, **kw)
        return Source(model, "transformers")

    return build


def _oft(config: Any = None, **kw: Any) -> Source:
    """A tiny OpenVLA-OFT: a mirror checkpoint folder written to a temporary directory, then loaded (its
    remote code is vlaprune's own, so it runs without asking)."""
    from vlaprune.adapters.load import load_folder
    from vlaprune.tiny.oft import tiny_oft_folder

    return load_folder(tiny_oft_folder(**kw), trust_remote_code=True)


def _openvla(config: Any = None, **kw: Any) -> Source:
    """A tiny plain OpenVLA (action tokens, no OFT head): a mirror folder written, then loaded."""
    from vlaprune.adapters.load import load_folder
    from vlaprune.tiny.openvla import tiny_openvla_folder

    return load_folder(tiny_openvla_folder(**kw), trust_remote_code=True)


TINY = {
    "smolvla": _smolvla,
    "pi0": _pi("pi0"),
    "pi05": _pi("pi05"),
    "llama": _hf("llama"),
    "qwen2": _hf("qwen2"),
    "siglip": _hf("siglip"),
    "oft": _oft,
    "openvla": _openvla,
}
for _name, _build in TINY.items():
    register_builder(f"tiny:{_name}", _build)
