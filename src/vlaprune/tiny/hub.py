"""Resolve hard-coded hub tokenizer ids to a local tiny tokenizer, without touching the user's hub cache.

lerobot's pi0 / pi0.5 processors load `google/paligemma-3b-pt-224`'s tokenizer by id. Tiny pi policies
carry `vlaprune_tokenizer_dir` (a local tiny tokenizer); while `redirect_tokenizers(policy)` is active,
`AutoTokenizer.from_pretrained(<that id>)` loads the local folder instead. Real policies are unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from vlaprune.tiny.tokenizer import build_tokenizer

PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"


def write_paligemma_like_tokenizer(out_dir: str | Path) -> Path:
    build_tokenizer(out_dir, bos="<bos>", eos="<eos>", specials=("<image>",), vocab_size=512)
    return Path(out_dir)


@contextlib.contextmanager
def redirect_tokenizers(policy: nn.Module) -> Iterator[None]:
    """While active, the policy's hard-coded tokenizer id loads its local tiny tokenizer (if it has one)."""
    local = getattr(policy, "vlaprune_tokenizer_dir", None)
    if local is None:
        yield
        return
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        return original(cls, str(local) if name == PALIGEMMA_TOKENIZER else name, *args, **kwargs)

    AutoTokenizer.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        AutoTokenizer.from_pretrained = classmethod(original)
