"""A tiny byte-level BPE tokenizer, trained offline in ~0.05 s, for tiny policies that need one."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "pick up the red cube and place it in the bowl",
    "push the T block to the target",
    "open the drawer",
    "close the window",
    "press the button from the top",
    "put the bowl on the plate",
    "reach the goal",
    "insert the peg into the hole",
]


def build_tokenizer(
    out_dir: str | Path,
    *,
    bos: str = "<|im_start|>",
    eos: str = "<end_of_utterance>",
    pad: str = "<pad>",
    unk: str = "<unk>",
    specials: tuple[str, ...] = (),
    extra_special: dict[str, str] | None = None,
    vocab_size: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on a fixed robot-instruction corpus and save it to `out_dir` (deterministic)."""
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special_tokens = list(dict.fromkeys([pad, unk, bos, eos, *specials]))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        extra_special_tokens=extra_special or {},
    )
    fast.save_pretrained(str(out_dir))
    return fast
