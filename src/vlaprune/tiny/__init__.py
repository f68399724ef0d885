"""Tiny random-weight instances of the real policy and model classes, built offline in seconds.

Used by the tests, by `vlaprune inspect --policy.path=tiny:<name>` and by the demo until trained assets ship.
Same classes users load from the hub (lerobot SmolVLAPolicy / PI0Policy / PI05Policy, transformers models),
just small, with non-trivial random weights.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from torch import nn


def _smolvla() -> nn.Module:
    from vlaprune.tiny.smolvla import tiny_smolvla, write_tiny_smolvlm

    return tiny_smolvla(write_tiny_smolvlm(tempfile.mkdtemp(prefix="vlaprune-tiny-smolvlm-")))


def _pi(kind: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from vlaprune.tiny.pi import tiny_pi

        return tiny_pi(kind)

    return build


def _hf(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from vlaprune.tiny import hf

        return hf.tiny_siglip() if name == "siglip" else hf.tiny_decoder_lm(name)

    return build


TINY: dict[str, Callable[[], nn.Module]] = {
    "smolvla": _smolvla,
    "pi0": _pi("pi0"),
    "pi05": _pi("pi05"),
    "llama": _hf("llama"),
    "qwen2": _hf("qwen2"),
    "siglip": _hf("siglip"),
}
