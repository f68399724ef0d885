"""An example observation batch for any lerobot policy, built from its config's input features.

Used to run one representative inference pass (FLOP counting, latency). Values are random but shaped
exactly as the policy's preprocessor would hand them over: images (B, 3, H, W) in [0, 1], state (B, D),
language tokens (B, L) with an all-ones attention mask, L = config.tokenizer_max_length.
"""

from __future__ import annotations

import torch
from torch import nn

LANG_TOKENS = "observation.language.tokens"
LANG_MASK = "observation.language.attention_mask"
TOKENS = (LANG_TOKENS, LANG_MASK)  # the batch keys of token ids and their mask


def example_batch(policy: nn.Module, batch_size: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch with every input feature of `policy.config`, plus language tokens and mask."""
    cfg = policy.config
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    for key, feat in cfg.input_features.items():
        batch[key] = torch.rand((batch_size, *feat.shape), generator=gen)
    n_tokens = int(getattr(cfg, "tokenizer_max_length", 16))
    vocab = _vocab_size(policy)
    batch[LANG_TOKENS] = torch.randint(1, max(2, vocab - 2), (batch_size, n_tokens), generator=gen)
    batch[LANG_MASK] = torch.ones(batch_size, n_tokens, dtype=torch.bool)
    device = next(policy.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _vocab_size(policy: nn.Module) -> int:
    for m in policy.modules():
        if isinstance(m, nn.Embedding) and m.num_embeddings > 2:
            return m.num_embeddings
    return 2


def inference_pass(policy: nn.Module, batch_size: int = 1):
    """A closure running `policy.predict_action_chunk` on an example batch (one action chunk)."""
    batch = example_batch(policy, batch_size)

    def run():
        policy.reset()
        return policy.predict_action_chunk(dict(batch))

    return run


def training_pass(policy: nn.Module, batch_size: int = 1):
    """A closure running `policy.forward` (the training loss) on an example batch with an action chunk."""
    batch = example_batch(policy, batch_size)
    cfg = policy.config
    action_dim = cfg.output_features["action"].shape[0]
    gen = torch.Generator().manual_seed(1)
    device = next(policy.parameters()).device
    batch["action"] = torch.randn(batch_size, cfg.chunk_size, action_dim, generator=gen).to(device)
    batch["action_is_pad"] = torch.zeros(batch_size, cfg.chunk_size, dtype=torch.bool, device=device)

    def run():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return policy.forward(dict(batch))

    return run
