"""OpenVLA-OFT's modules that live outside the VLA checkpoint: the action head and the proprio / noisy-action
projectors, with the same parameter names as OFT's `prismatic.models.action_heads` / `projectors` (written
here from its structure: OFT's code is not on PyPI), so that OFT's `action_head--<step>_checkpoint.pt` files
load into them strictly and vlaprune's saved head files load back into OFT's classes.

    head = head_from_state_dict(read_component(path))   # L1 or diffusion head, shapes read from the file

L1 head (`L1RegressionActionHead`): the VLA's last hidden states at the chunk * A action positions,
(B, chunk * A, D), reshaped to (B, chunk, A * D), through an MLP-ResNet: layer_norm1 -> fc1 (A * D -> H) ->
ReLU -> blocks `mlp_resnet_blocks[i]` (x + ffn(x), ffn = LayerNorm -> Linear(H, H) -> ReLU) -> layer_norm2 ->
fc2 (H -> A): (B, chunk, A). OFT builds it with H = D (4096 for Llama-2 7B) and 2 blocks; the DTR paper
shrinks H (4096 -> 2048 / 256). The diffusion head has the same MLP-ResNet as `noise_predictor.mlp_resnet`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaprune.errors import VlapruneError

DDP_PREFIX = "module."
INFERENCE_STEPS = 50  # OFT's num_diffusion_steps_inference (run_libero_eval.py default)
IGNORE_INDEX = -100  # label of positions that are not action tokens (prompt, patches, padding)


def read_component(path: str | Path) -> dict[str, torch.Tensor]:
    """A component file OFT saves beside the VLA (a torch state dict, DDP-prefixed keys or not), as a state
    dict without the prefix. Read with weights_only=True: tensors only, no code runs."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (corrupt file, not a state dict)
        raise VlapruneError(
            f"cannot read {path} ({type(e).__name__}); re-copy the file from the checkpoint"
        ) from None
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise VlapruneError(f"{path} is not a state dict of tensors; pass OFT's own checkpoint file")
    return {k.removeprefix(DDP_PREFIX): v for k, v in sd.items()}


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Diffusion timestep embedding (B,) -> (B, dim), sin and cos halves as OFT's time encoder."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device) * -math.log(10000) / (half - 1))
    arg = t.float()[:, None] * freq[None, :]
    return torch.cat((arg.sin(), arg.cos()), dim=-1)


def cosine_alphas_cumprod(steps: int) -> torch.Tensor:
    """alpha-bar of DDIM's "squaredcos_cap_v2" schedule (what OFT's diffusion head trains with), (steps,)."""
    bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - bar((i + 1) / steps) / bar(i / steps), 0.999) for i in range(steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0).float()


class MLPResNetBlock(nn.Module):
    """x + ffn(x), ffn = LayerNorm -> Linear(dim, dim) -> ReLU: one pre-norm residual branch, no attention."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))  # (B, chunk, H)
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))  # (B, chunk, A)


class L1RegressionActionHead(nn.Module):
    """OFT's L1 head. input_dim: the LLM width D; the MLP reads A * D features per chunk step."""

    def __init__(self, input_dim: int, hidden_dim: int, action_dim: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.model = MLPResNet(num_blocks, input_dim * action_dim, hidden_dim, action_dim)

    def predict_action(self, hidden: torch.Tensor, chunk: int) -> torch.Tensor:
        """(B, chunk * A, D) action-position hidden states -> (B, chunk, A) normalized actions."""
        return self.model(hidden.reshape(hidden.shape[0], chunk, -1))


class DiffusionActionHead(nn.Module):
    """OFT's diffusion head: the same MLP-ResNet predicts the noise added to the action chunk (DDIM,
    squaredcos_cap_v2); the timestep embedding enters the VLA as one more token."""

    def __init__(
        self, input_dim: int, hidden_dim: int, action_dim: int, num_blocks: int = 2, steps: int = 50
    ):
        super().__init__()
        # the timestep embedding enters the VLA as a token: LLM width, whatever the MLP's hidden width
        self.action_dim, self.time_dim, self.num_diffusion_steps_train = action_dim, input_dim, steps
        self.noise_predictor = nn.Module()
        self.noise_predictor.mlp_resnet = MLPResNet(
            num_blocks, input_dim * action_dim, hidden_dim, action_dim
        )
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(steps), persistent=False)

    def sample_noisy_actions(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Noise, noisy actions (B, chunk, A) and the timestep embedding (B, 1, hidden), from torch's RNG."""
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.num_diffusion_steps_train, (actions.shape[0],), device=actions.device)
        ab = self.alphas_cumprod.to(actions.device)[t].view(-1, 1, 1).to(actions.dtype)
        noisy = ab.sqrt() * actions + (1 - ab).sqrt() * noise
        emb = sinusoidal(t, self.time_dim).to(actions.dtype).unsqueeze(1)
        return {"noise": noise, "noisy_actions": noisy, "diffusion_timestep_embeddings": emb}

    def predict_noise(self, hidden: torch.Tensor, chunk: int) -> torch.Tensor:
        return self.noise_predictor.mlp_resnet(hidden.reshape(hidden.shape[0], chunk, -1))

    def sample_noise(self, shape: tuple, device: torch.device) -> torch.Tensor:
        """The reverse diffusion's starting noise (B, chunk, A), standard normal from torch's RNG as OFT's
        predict_action draws it; closed loop replaces it with one generator per episode seed."""
        return torch.randn(tuple(shape)).to(device)

    def scheduler(self, steps: int = INFERENCE_STEPS) -> Any:
        """diffusers' DDIMScheduler as OFT builds it (num_train_timesteps = the training steps,
        "squaredcos_cap_v2", diffusers' defaults otherwise), set to `steps` inference steps (OFT's
        run_libero_eval default: 50)."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(
            num_train_timesteps=self.num_diffusion_steps_train, beta_schedule="squaredcos_cap_v2"
        )
        sched.set_timesteps(steps)
        return sched


class ProprioProjector(nn.Module):
    """Robot state (B, P) -> one LLM token (B, D): fc1 -> GELU -> fc2."""

    def __init__(self, llm_dim: int, proprio_dim: int) -> None:
        super().__init__()
        self.llm_dim, self.proprio_dim = llm_dim, proprio_dim
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


class NoisyActionProjector(ProprioProjector):
    """[Diffusion] each noisy action value (B, chunk * A, 1) -> an LLM token embedding (same layers)."""

    def __init__(self, llm_dim: int) -> None:
        super().__init__(llm_dim, 1)


def _resnet_shape(sd: dict[str, torch.Tensor], prefix: str) -> tuple[int, int, int, int]:
    """(input features, hidden width, action dim, blocks) of the MLP-ResNet under `prefix`."""
    blocks = {
        int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"mlp_resnet_blocks\.(\d+)\.", k))
    }
    hidden, features = sd[f"{prefix}fc1.weight"].shape
    return features, hidden, sd[f"{prefix}fc2.weight"].shape[0], len(blocks)


def head_from_state_dict(
    sd: dict[str, torch.Tensor], llm_dim: int, where: str = "the head file"
) -> nn.Module:
    """The L1 or diffusion head whose shapes `sd` has (any hidden width and block count), weights loaded
    strictly. llm_dim: the VLA's hidden size D (the head reads A * D features per chunk step)."""
    for prefix, cls in (
        ("model.", L1RegressionActionHead),
        ("noise_predictor.mlp_resnet.", DiffusionActionHead),
    ):
        if f"{prefix}fc1.weight" in sd:
            features, hidden, action_dim, blocks = _resnet_shape(sd, prefix)
            if features != llm_dim * action_dim:
                raise VlapruneError(
                    f"{where} reads {features} features per chunk step, but this VLA gives "
                    f"{action_dim} x {llm_dim}; the head belongs to another checkpoint"
                )
            head = cls(llm_dim, hidden, action_dim, blocks)
            load_strict(head, sd, where)
            return head
    raise VlapruneError(
        f"{where} holds neither an L1 head (model.fc1) nor a diffusion head (noise_predictor)"
    )


def projector_from_state_dict(sd: dict[str, torch.Tensor], where: str) -> ProprioProjector:
    out_dim, in_dim = sd["fc1.weight"].shape
    proj = (
        NoisyActionProjector(out_dim)
        if in_dim == 1 and "noisy" in where
        else ProprioProjector(out_dim, in_dim)
    )
    load_strict(proj, sd, where)
    return proj


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise VlapruneError(f"{where} does not fit its module ({' '.join(str(e).split())[:200]})") from None


def ddp_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights as OFT's trainer saves them (DistributedDataParallel: keys prefixed `module.`)."""
    return {DDP_PREFIX + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
