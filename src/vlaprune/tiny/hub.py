"""A local tiny tokenizer standing in for a hub one, without touching the user's hub cache.

lerobot's pi0 / pi0.5 processors load `google/paligemma-3b-pt-224`'s tokenizer by id. Tiny pi policies come
with a local tiny tokenizer (their Source's `tokenizers` maps the id to it); `vlaprune.data` redirects the id
to that folder while it builds the processors. Real policies are unaffected.
"""

from __future__ import annotations

from pathlib import Path

from vlaprune.tiny.tokenizer import build_tokenizer

PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"


def write_paligemma_like_tokenizer(out_dir: str | Path) -> Path:
    build_tokenizer(out_dir, bos="<bos>", eos="<eos>", specials=("<image>",), vocab_size=512)
    return Path(out_dir)
