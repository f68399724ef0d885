"""A tiny plain-OpenVLA checkpoint folder (discretized action tokens, no OFT head), written offline in
seconds, laid out as openvla/openvla-7b-finetuned-libero-* are:

    config.json                 model_type "openvla", auto_map naming AutoConfig and AutoModelForVision2Seq,
                                norm_stats, n_action_bins 256, pad_to_multiple_of 64
    configuration_prismatic.py  the OFT mirror's (vlaprune.tiny.oft_remote: same config class as OpenVLA's)
    modeling_prismatic.py       plain OpenVLA's model (vlaprune.tiny.openvla_remote: causal LLM, LM loss,
                                cached generation, predict_action)
    model.safetensors, dataset_statistics.json, preprocessor_config.json, tokenizer files

    folder = write_tiny_openvla(tmp / "openvla")   # then --policy.path=folder --policy.trust_remote_code=true

Vocabulary: OpenVLA's action tokens are the last 256 ids of the tokenizer (its ActionTokenizer: token =
tokenizer.vocab_size - bin, bin in 1..256), and its predict_action recovers that vocabulary size as
text_config.vocab_size - pad_to_multiple_of (Llama-2: 32064 - 64 = 32000). The mirror keeps both rules and all
256 bins: a byte-level tokenizer of exactly 320 ids and an LLM vocabulary of 320 + 64 = 384, so action tokens
are ids 64..319. They overlap ordinary byte tokens (OpenVLA overwrites Llama's 256 least used tokens the same
way); prompts are masked out of the loss, so the overlap changes nothing vlaprune computes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vlaprune.tiny.oft import AUTO_MAP, REMOTE, image_processor, norm_stats
from vlaprune.tiny.tokenizer import build_tokenizer
from vlaprune.tiny.weights import make_nontrivial

PLAIN_REMOTE = Path(__file__).parent / "openvla_remote"
TOKENIZER_VOCAB, PAD_TO = 320, 64


def write_tiny_openvla(folder: str | Path, *, seed: int = 0, layers: int = 4, hidden: int = 64) -> Path:
    """Write the folder (see the module docstring); the statistics are the OFT mirror's (`norm_stats`)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REMOTE / "configuration_prismatic.py", folder / "configuration_prismatic.py")
    shutil.copy2(PLAIN_REMOTE / "modeling_prismatic.py", folder / "modeling_prismatic.py")
    tok = build_tokenizer(folder, bos="<s>", eos="</s>", pad="<PAD>", unk="<unk>", vocab_size=TOKENIZER_VOCAB)
    assert tok.vocab_size == TOKENIZER_VOCAB, tok.vocab_size  # the corpus has enough merges
    stats = norm_stats(seed)
    text = {
        "vocab_size": TOKENIZER_VOCAB + PAD_TO,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    cfg: dict[str, Any] = {"model_type": "openvla", "auto_map": AUTO_MAP, "text_config": text}
    (folder / "config.json").write_text(json.dumps(cfg | {"norm_stats": stats}, indent=2))
    cls = get_class_from_dynamic_module(AUTO_MAP["AutoModelForVision2Seq"], str(folder))
    torch.manual_seed(seed)
    config = cls.config_class(
        text_config=text,
        norm_stats=stats,
        n_action_bins=256,
        pad_token_id=tok.pad_token_id,
        pad_to_multiple_of=PAD_TO,
    )
    config.auto_map = AUTO_MAP
    config.architectures = ["OpenVLAForActionPrediction"]
    make_nontrivial(cls(config), seed).eval().save_pretrained(str(folder))
    written = json.loads((folder / "config.json").read_text())
    written["auto_map"] = AUTO_MAP  # as OpenVLA's: no AutoModel entry
    (folder / "config.json").write_text(json.dumps(written, indent=2))
    (folder / "dataset_statistics.json").write_text(json.dumps(stats, indent=2))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(image_processor(config.image_sizes), indent=2)
    )
    return folder


def tiny_openvla_folder(**kw: Any) -> Path:
    """A fresh tiny plain-OpenVLA folder in a temporary directory (the `tiny:openvla` builder)."""
    return write_tiny_openvla(Path(tempfile.mkdtemp(prefix="vlaprune-tiny-openvla-")) / "openvla", **kw)
