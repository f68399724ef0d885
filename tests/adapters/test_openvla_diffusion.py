"""OFT's diffusion head samples actions as OFT's predict_action does: diffusers' DDIM (50 steps,
squaredcos_cap_v2) from noise seeded per episode in closed loop."""

import numpy as np
import pytest
import torch

from vlaprune.adapters import closed_loop_policy
from vlaprune.adapters.openvla.head import sinusoidal
from vlaprune.adapters.openvla.policy import action_hidden, example_batch, predict_actions, vla_forward
from vlaprune.configs import PolicyConfig
from vlaprune.evaluate.closed_loop import episode_noise
from vlaprune.policy import load_policy


@pytest.fixture(scope="module")
def diffusion(tmp_path_factory):
    from vlaprune.tiny.oft import write_tiny_oft

    folder = write_tiny_oft(tmp_path_factory.mktemp("oft-diffusion") / "oft", head="diffusion")
    return load_policy(PolicyConfig(path=str(folder), trust_remote_code=True)).module


def test_sampler_is_ddim_by_hand(diffusion):
    """50 DDIM steps (eta 0, x0 clipped to [-1, 1], alpha-bar 1 after the last step) with the head's own
    training schedule, noise from torch's RNG as OFT draws it."""
    policy, head = diffusion, diffusion.action_head
    batch = example_batch(policy, batch_size=2)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        got = predict_actions(policy, batch)
        torch.manual_seed(3)
        x = torch.randn(2, policy.chunk, head.action_dim)
    ab = head.alphas_cumprod.double()
    for t in range(head.num_diffusion_steps_train - 1, -1, -1):
        emb = sinusoidal(torch.full((2,), t), head.time_dim).unsqueeze(1)
        noisy = {"noisy_actions": x, "diffusion_timestep_embeddings": emb}
        eps = head.predict_noise(action_hidden(policy, vla_forward(policy, batch, noisy), batch["labels"]), 8)
        eps = eps.reshape(x.shape).double()
        x0 = ((x.double() - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-1, 1)
        prev = ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        x = (prev.sqrt() * x0 + (1 - prev).sqrt() * eps).float()
    assert got.shape == (2, policy.chunk, head.action_dim) and got.abs().max() <= 1
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-5)


def test_closed_loop_seeds_the_noise_per_episode(diffusion):
    """Eval no longer refuses a diffusion-head OFT policy; the same episode seed gives the same chunk."""
    cl = closed_loop_policy(diffusion, "libero", "libero_spatial/0")
    gen = torch.Generator().manual_seed(0)
    batch = {"task": ["pick up the black bowl"], "observation.state": torch.rand(1, 8, generator=gen)}
    for cam in ("observation.images.image", "observation.images.image2"):
        batch[cam] = torch.rand(1, 3, 256, 256, generator=gen)

    def chunk(seed):
        with episode_noise(cl, [seed]):
            torch.manual_seed(0)  # the same global RNG: only the episode seed differs
            return cl.predict_chunk(batch)

    a, b, c = chunk(7), chunk(7), chunk(8)
    assert a.shape == (1, 8, 7) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[..., :6], c[..., :6])
