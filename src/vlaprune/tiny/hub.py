"""Put a tiny tokenizer into the Hugging Face cache under a hub id, so code that hard-codes that id
(lerobot's pi0 / pi0.5 processors use google/paligemma-3b-pt-224) resolves offline (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
from pathlib import Path

from vlaprune.tiny.tokenizer import build_tokenizer

PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"


def cache_tiny_tokenizer(repo_id: str = PALIGEMMA_TOKENIZER, hub_cache: str | Path | None = None) -> Path:
    """Write the tokenizer as snapshot 000...0 of `repo_id` in the hub cache (default: HF_HUB_CACHE)."""
    from huggingface_hub import constants

    cache = Path(hub_cache or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    rev = "0" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    if (snap / "tokenizer.json").is_file():
        return snap
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    build_tokenizer(snap, bos="<bos>", eos="<eos>", specials=("<image>",), vocab_size=512)
    (snap / "config.json").write_text(
        '{"model_type": "paligemma"}'
    )  # transformers 5 wants a config beside it
    return snap
