"""perplexity: the VLM's own next-token loss on the dataset's instructions, with each language block removed.
Higher score = keep.

score_i = CE(block i removed) - CE(all blocks), CE the mean next-token cross-entropy of the language model
(its language stack and LM head) over the instruction tokens of the calibration batches (padding masked);
block i is removed by its residual gate at 0 (`gates.virtual_gates`, as `loo` does), exactly h_out = h_in.
It measures what the *VLM* loses, not the action loss: the paper's point is that the two disagree.

Where the language model and its head live (each family says: `Family.language_model`; the instruction
tokens come from the batches):
  smolvla    model.vlm_with_expert.vlm: text_model + lm_head; tokens observation.language.tokens / _mask
  pi0, pi05  model.paligemma_with_expert.paligemma: language_model + lm_head; the same token keys
  hf         a transformers causal LM (its `get_output_embeddings()`); tokens input_ids / attention_mask
Only the language stack has a language-model head; other stacks, and models without a head, are refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlaprune.adapters import FAMILIES
from vlaprune.adapters.stack import Layout
from vlaprune.errors import VlapruneError
from vlaprune.scoring.gates import virtual_gates
from vlaprune.scoring.probe import Probe, Scores


def check(layout: Layout, stacks: list[str]) -> None:
    """Refuse, before any work, models without a language-model head and stacks other than language."""
    _lm(layout)
    other = [s for s in stacks if layout.stacks[s].component != "language"]
    if other:
        raise VlapruneError(
            f"perplexity scores language blocks only (the language model's own loss); {', '.join(other)} "
            "has no language-model head: pass --components=language"
        )


def _lm(layout: Layout) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tuple[str, str]]:
    """(ids, mask -> logits (B, T, V), the batch keys of ids and mask) for this model's language model."""
    model, family = layout.model, layout.family
    fam = FAMILIES.get(family)
    text, head, keys = fam.language_model(model) if fam and fam.language_model else (None, None, None)
    if text is None or not isinstance(head, torch.nn.Module):
        raise VlapruneError(
            f"perplexity needs a language-model head, and this {family} model has none; rank with gateprobe "
            "or loo instead"
        )

    def logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = text(input_ids=ids, attention_mask=mask).last_hidden_state
        return head(hidden)

    return logits, keys


def _nll(probe: Probe, logits_fn, keys: tuple[str, str]) -> float:
    """Mean next-token cross-entropy over every valid (non-padding) predicted token of every batch."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in probe.batches:
            if keys[0] not in batch:
                raise VlapruneError(
                    f"perplexity needs the instructions' tokens ({keys[0]!r}) in the calibration batches; "
                    "this dataset / processor gives none"
                )
            ids = batch[keys[0]].long()
            mask = batch.get(keys[1])
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            logits = logits_fn(ids, mask).float()
            target, valid = ids[:, 1:], mask[:, 1:] & mask[:, :-1]
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")
            total += float(ce[valid].sum())
            count += int(valid.sum())
    if count == 0:
        raise VlapruneError("perplexity: the calibration batches hold no instruction token pairs to predict")
    return total / count


def perplexity(probe: Probe) -> Scores:
    """CE with block i gated out minus CE with every block, per language block (>= 0 when it helps)."""
    check(probe.layout, probe.stacks)
    logits_fn, keys = _lm(probe.layout)
    with virtual_gates(probe.layout, probe.stacks, "block") as gates:
        base = _nll(probe, logits_fn, keys)
        out: dict[str, list[float]] = {}
        for s in probe.stacks:
            out[s] = []
            for i in range(len(probe.layout.stacks[s])):
                gates.set((s, i), 0.0)
                out[s].append(_nll(probe, logits_fn, keys) - base)
                gates.set((s, i), 1.0)
    return Scores(out, {"base_nll": base, "base_perplexity": float(torch.tensor(base).exp())})
