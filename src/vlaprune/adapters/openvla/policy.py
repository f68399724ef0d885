"""Adapter for OpenVLA / OpenVLA-OFT (Prismatic): the VLA and the modules OFT keeps beside it, as one policy.

OFT's checkpoint is a transformers remote-code model (`OpenVLAForActionPrediction`) plus files saved next to
it: the action head (`action_head--<step>_checkpoint.pt`), the proprio projector and, for the diffusion head,
the noisy-action projector. They are not submodules of the VLA; `OpenVLAPolicy` holds all of them so every
stage sees one module (`vlaprune.adapters.openvla.load` reads and writes the folder).

Stacks (paths from the OpenVLAPolicy root):
    language       vla.language_model.model.layers                         Llama-2 (num_hidden_layers)
    vision.dino    vla.vision_backbone.featurizer.blocks                    DINOv2, nn.Sequential (timm)
    vision.siglip  vla.vision_backbone.fused_featurizer.blocks              SigLIP, nn.Sequential (timm)
    action         action_head.model.mlp_resnet_blocks                      L1 head: x + ffn(x), no attention
                   (action_head.noise_predictor.mlp_resnet.mlp_resnet_blocks for the diffusion head)
Read-out: Prismatic binds each tower's forward to `get_intermediate_layers(n={depth - 2})` when it builds
the model, so the projector reads block depth-2 and the last block is unused. The vision stacks record that
index (`ReadOut`); a drop before it re-binds the forward to the same block, dropping the block itself is
refused.

Attention: OFT's transformers fork (4.40.1 + one commit) makes the Llama attention bidirectional: every
position attends to every non-padding position (its SDPA path keeps only the padding columns of the causal
mask). Stock transformers would run OFT's remote code causally, so `OpenVLAPolicy` switches the LLM to
bidirectional attention for OFT's code (`bidirectional`); plain OpenVLA (no OFT modules) stays causal.

Loss (OFT's finetune.py): the VLA runs with `labels` marking the chunk * A action positions; the last
hidden states one position before each action token, (B, chunk * A, D), go through the head: L1 loss
against `actions` (B, chunk, A) for the L1 head, MSE against the sampled noise for the diffusion head.
Both are means over (B, chunk, A), so example b weighs 1/B in the batch loss (GateProbe's per-example rule).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.adapters.hf.layout import config_counter, stacks_from_paths
from vlaprune.adapters.openvla.head import IGNORE_INDEX, INFERENCE_STEPS, DiffusionActionHead, sinusoidal
from vlaprune.adapters.stack import Counter, Layout, ReadOut
from vlaprune.errors import VlapruneError

LANGUAGE = "language_model.model.layers"
VISION = {"vision.dino": "vision_backbone.featurizer", "vision.siglip": "vision_backbone.fused_featurizer"}
HEAD_BLOCKS = {"l1": "model.mlp_resnet_blocks", "diffusion": "noise_predictor.mlp_resnet.mlp_resnet_blocks"}
# the head's MLP-ResNet: normalized actions (B, chunk, A) for the L1 head, the predicted noise for diffusion
HEAD_RESNET = {"l1": "model", "diffusion": "noise_predictor.mlp_resnet"}
# OFT's prismatic/vla/constants.py picks these by searching sys.argv; vlaprune picks by the dataset key of the
# checkpoint's norm_stats instead (same table, LIBERO when unclear, as OFT)
CHUNKS = {"aloha": 25, "bridge": 5, "libero": 8}


def chunk_for(norm_stats: dict | None) -> int:
    """Action chunk length of a checkpoint, from the dataset names in its statistics (OFT's constants)."""
    keys = " ".join(norm_stats or {}).lower()
    return next((n for word, n in CHUNKS.items() if word in keys), CHUNKS["libero"])


def head_kind(head: nn.Module | None) -> str | None:
    if head is None:
        return None
    return "diffusion" if isinstance(head, DiffusionActionHead) else "l1"


def readout_index(featurizer: nn.Module) -> int:
    """The block whose output the tower returns: the `n` Prismatic bound into its forward
    (`unpack_tuple(partial(get_intermediate_layers, n={k}))`), else the last block."""
    fwd = featurizer.__dict__.get("forward")
    if isinstance(fwd, _ReadOutForward):
        return fwd.index
    for cell in getattr(fwd, "__closure__", None) or ():
        bound = cell.cell_contents
        n = bound.keywords.get("n") if isinstance(bound, partial) else None
        if isinstance(n, set | list | tuple) and len(n) == 1:
            return int(next(iter(n)))
        if isinstance(n, int):
            return len(featurizer.blocks) - n
    return len(featurizer.blocks) - 1


def is_oft_model(vla: nn.Module) -> bool:
    """Is this VLA OFT's code (its forward takes OFT's extra modules), as opposed to plain OpenVLA?"""
    return "proprio_projector" in inspect.signature(type(vla).forward).parameters


def bidirectional(llm: nn.Module) -> None:
    """Make a transformers decoder attend bidirectionally, as OFT's fork does: the mask keeps only the
    padding (transformers 5 builds a bidirectional mask when `config.is_causal` is False), and SDPA's own
    causal flag is off in every attention module (it would apply when the mask is skipped: no padding)."""
    llm.config.is_causal = False
    for module in llm.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False


def set_readout(featurizer: nn.Module, index: int) -> None:
    """Bind the tower's forward to return block `index`'s features, as Prismatic binds it at build time. The
    binding is an object (`_ReadOutForward`), not a closure, so a deep copy of the policy reads its own
    tower (a copied closure would keep calling the original's blocks, e.g. after the original is cut)."""
    featurizer.forward = _ReadOutForward(featurizer, index)


class _ReadOutForward:
    """A tower's forward bound to block `index` (`set_readout`): get_intermediate_layers(x, n={index})[0]."""

    def __init__(self, featurizer: nn.Module, index: int) -> None:
        self.featurizer, self.index = featurizer, index

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.featurizer.get_intermediate_layers(*args, n={self.index}, **kwargs)
        return out[0] if isinstance(out, tuple) else out  # as Prismatic's unpack_tuple


class OpenVLAPolicy(nn.Module):
    """An OpenVLA(-OFT) VLA with OFT's separately saved modules (any of them None when absent).

    chunk: actions per chunk (OFT's NUM_ACTIONS_CHUNK); step: the training step in the component file
    names (`action_head--<step>_checkpoint.pt`); num_images: images per example for the example pass.
    The LLM attends bidirectionally when the VLA is OFT's code (see the module docstring)."""

    def __init__(
        self,
        vla: nn.Module,
        *,
        action_head: nn.Module | None = None,
        proprio_projector: nn.Module | None = None,
        noisy_action_projector: nn.Module | None = None,
        chunk: int = 8,
        step: str = "0",
        num_images: int = 1,
    ) -> None:
        super().__init__()
        self.vla, self.action_head = vla, action_head
        self.proprio_projector, self.noisy_action_projector = proprio_projector, noisy_action_projector
        self.chunk, self.step, self.num_images = chunk, step, num_images
        self.folder: Path | None = None  # the checkpoint folder it was read from (tokenizer, statistics)
        if is_oft_model(vla):
            bidirectional(vla.language_model)
        for path in VISION.values():  # Prismatic's closure binding -> one a deep copy keeps apart
            feat = _submodule(vla, path)
            if feat is not None and hasattr(feat, "get_intermediate_layers"):
                set_readout(feat, readout_index(feat))

    @property
    def action_dim(self) -> int:
        return self.action_head.action_dim

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """OFT's training loss on one batch in OFT's format (see the module docstring): (loss, metrics)."""
        return oft_loss(self, batch)


def _require_head(policy: OpenVLAPolicy) -> nn.Module:
    if policy.action_head is None:
        raise VlapruneError(
            "this OpenVLA has no action head, so it has no OFT action loss; load an OFT checkpoint folder "
            "that holds its action_head--*_checkpoint.pt"
        )
    return policy.action_head


def action_hidden(policy: OpenVLAPolicy, out: Any, labels: torch.Tensor) -> torch.Tensor:
    """(B, chunk * A, D): the LLM's last hidden states one position before each action token."""
    n = policy.chunk * policy.action_dim
    hidden = out.hidden_states[-1][:, out.projector_features.shape[1] : -1]  # text positions, shifted
    lab = labels[:, 1:]
    seen = torch.cumsum(lab != IGNORE_INDEX, dim=1)
    mask = (lab != IGNORE_INDEX) & (seen <= n)
    counts = mask.sum(1)
    if bool((counts != n).any()):
        raise VlapruneError(
            f"a batch row labels {int(counts.min())} action tokens, not chunk x action dims = "
            f"{policy.chunk} x {policy.action_dim}; the batch is not in this checkpoint's OFT format"
        )
    return hidden[mask].reshape(labels.shape[0], n, -1)


def vla_forward(policy: OpenVLAPolicy, batch: dict[str, torch.Tensor], noisy: dict | None = None) -> Any:
    """The VLA's forward on an OFT batch (input_ids, attention_mask, pixel_values, labels[, proprio])."""
    vla = policy.vla
    pixels = batch["pixel_values"]
    per_image = 6 if getattr(vla.vision_backbone, "use_fused_vision_backbone", True) else 3
    vla.vision_backbone.set_num_images_in_input(pixels.shape[1] // per_image)
    use_proprio = policy.proprio_projector is not None and "proprio" in batch
    noisy = noisy or {}
    return vla(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=pixels.to(next(vla.parameters()).dtype),
        labels=batch["labels"],
        output_hidden_states=True,
        proprio=batch["proprio"] if use_proprio else None,
        proprio_projector=policy.proprio_projector if use_proprio else None,
        noisy_actions=noisy.get("noisy_actions"),
        noisy_action_projector=policy.noisy_action_projector if noisy else None,
        diffusion_timestep_embeddings=noisy.get("diffusion_timestep_embeddings"),
        use_cache=False,
    )


def oft_loss(policy: OpenVLAPolicy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """OFT's loss: L1(actions, head(hidden)) or, for the diffusion head, MSE(predicted noise, noise)."""
    head = _require_head(policy)
    actions = batch["actions"]  # (B, chunk, A), normalized to [-1, 1]
    if isinstance(head, DiffusionActionHead):
        noisy = head.sample_noisy_actions(actions)
        hidden = action_hidden(policy, vla_forward(policy, batch, noisy), batch["labels"])
        pred = head.predict_noise(hidden, policy.chunk)
        loss = nn.functional.mse_loss(pred.reshape(noisy["noise"].shape), noisy["noise"])
        return loss, {"noise_mse": loss.detach().item()}
    hidden = action_hidden(policy, vla_forward(policy, batch), batch["labels"])
    pred = head.predict_action(hidden, policy.chunk)
    loss = nn.functional.l1_loss(pred, actions.to(pred.dtype))
    return loss, {"l1": loss.detach().item()}


@torch.no_grad()
def predict_actions(policy: OpenVLAPolicy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Normalized actions (B, chunk, A) of the L1 head for an OFT batch (its labels mark the action slots)."""
    head = _require_head(policy)
    if isinstance(head, DiffusionActionHead):
        return sample_actions(policy, batch)
    return head.predict_action(
        action_hidden(policy, vla_forward(policy, batch), batch["labels"]), policy.chunk
    )


@torch.no_grad()
def sample_actions(policy: OpenVLAPolicy, batch: dict[str, torch.Tensor], steps: int = 0) -> torch.Tensor:
    """Normalized actions (B, chunk, A) of the diffusion head, sampled as OFT's predict_action does: noise
    from `head.sample_noise`, then for each of diffusers' DDIM timesteps (`head.scheduler`, 50 by default)
    the timestep embedding and the noisy actions enter the VLA, the head predicts the noise and the
    scheduler steps x_t -> x_{t-1} (deterministic DDIM, eta 0)."""
    head = policy.action_head
    sched = head.scheduler(steps or INFERENCE_STEPS)
    n = batch["input_ids"].shape[0]
    dtype = next(policy.vla.parameters()).dtype
    x = head.sample_noise((n, policy.chunk, head.action_dim), batch["input_ids"].device).to(dtype)
    for t in sched.timesteps:
        emb = sinusoidal(t.reshape(1).repeat(n), head.time_dim).to(x.device, dtype).unsqueeze(1)
        noisy = {"noisy_actions": x, "diffusion_timestep_embeddings": emb}
        hidden = action_hidden(policy, vla_forward(policy, batch, noisy), batch["labels"])
        noise = head.predict_noise(hidden, policy.chunk).reshape(x.shape)
        x = sched.step(noise, t, x).prev_sample
    return x


def example_batch(policy: OpenVLAPolicy, batch_size: int = 1, prompt: int = 8) -> dict[str, torch.Tensor]:
    """An OFT batch of random values: <s> + `prompt` tokens + chunk * A action tokens + </s>, one image pair
    per example (x num_images), the proprio state and the action chunk."""
    vla, gen = policy.vla, torch.Generator().manual_seed(0)
    text = vla.config.text_config
    n_act = policy.chunk * (policy.action_dim if policy.action_head is not None else 7)
    bos, eos = text.bos_token_id or 1, text.eos_token_id or 2
    words = torch.randint(max(bos, eos) + 1, 64, (batch_size, prompt), generator=gen)
    acts = torch.full((batch_size, n_act), text.vocab_size - 2)
    ids = torch.cat([torch.full((batch_size, 1), bos), words, acts, torch.full((batch_size, 1), eos)], 1)
    labels = torch.cat([torch.full((batch_size, 1 + prompt), IGNORE_INDEX), acts, ids[:, -1:]], 1)
    size = vla.config.image_sizes[0]
    channels = (6 if vla.vision_backbone.use_fused_vision_backbone else 3) * policy.num_images
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "pixel_values": torch.rand(batch_size, channels, size, size, generator=gen),
        "labels": labels,
        "actions": torch.rand(batch_size, policy.chunk, n_act // policy.chunk, generator=gen) * 2 - 1,
    }
    if policy.proprio_projector is not None:
        batch["proprio"] = torch.rand(batch_size, policy.proprio_projector.proprio_dim, generator=gen)
    device = next(policy.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def example_pass(policy: OpenVLAPolicy) -> Callable[[], Any]:
    """One forward of VLA + head on an example batch (OFT's inference is one such pass for the L1 head)."""
    batch = example_batch(policy)

    def run() -> Any:
        if policy.action_head is None:
            return vla_forward(policy, batch)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return oft_loss(policy, batch)

    return run


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _readout(featurizer: nn.Module) -> ReadOut:
    return ReadOut(readout_index(featurizer), lambda k: set_readout(featurizer, k))


def layout(policy: OpenVLAPolicy) -> Layout:
    vla = policy.vla
    names = {"language": f"vla.{LANGUAGE}"}
    for name, path in VISION.items():
        try:
            vla.get_submodule(path)
        except AttributeError:
            continue  # a single (unfused) vision backbone
        names[name] = f"vla.{path}.blocks"
    kind = head_kind(policy.action_head)
    if kind:
        names["action"] = f"action_head.{HEAD_BLOCKS[kind]}"
    stacks = stacks_from_paths(policy, names)
    text_cfg = vla.config.text_config
    lang = stacks["language"]
    if not any(c.owner is text_cfg for c in lang.counters):
        lang.counters.append(Counter(text_cfg, "num_hidden_layers", "vla.config.text_config"))
    lang.counters += [
        c for c in config_counter(policy, lang.path) if all(c.owner is not o.owner for o in lang.counters)
    ]
    for name, path in VISION.items():
        if name in stacks:
            feat = vla.get_submodule(path)
            stacks[name].readout = _readout(feat)
            k = stacks[name].readout.index
            stacks[name].notes = [
                "read by the projector" if i == k else ("unused (after the read-out block)" if i > k else "")
                for i in range(len(feat.blocks))
            ]
    if kind:
        stacks["action"].single_branch = "ffn"
    forward = example_pass(policy)
    desc = f"forward of VLA{' + ' + kind + ' head' if kind else ''} (batch 1, {policy.num_images} image(s))"
    return Layout(
        family="openvla",
        model=policy,
        stacks=stacks,
        parts={
            "vision": ["vla.vision_backbone"],
            "projector": ["vla.projector", "proprio_projector", "noisy_action_projector"],
            "language": ["vla.language_model"],
            "action": ["action_head"],
        },
        forward=forward,
        forward_desc=desc,
        training_forward=forward if kind else None,
        config_expresses={"language"},
        action_out=f"action_head.{HEAD_RESNET[kind]}" if kind else None,  # the MLP-ResNet's output
        noise="action_head" if kind == "diffusion" else None,  # the DDIM sampler's starting noise
        example_weights=lambda batch: torch.full(
            (batch["input_ids"].shape[0],), 1.0 / batch["input_ids"].shape[0]
        ),
    )
