"""Closed-loop rollouts run an uncut SmolVLA on vlaprune's joint forward (`adapters.inference`, SmolVLA's
`Family.inference`): the same actions, the override only while the episodes run, other families and models
that already run it left as they are."""

import torch

from vlaprune.adapters import inference
from vlaprune.adapters.lerobot.batch import example_batch
from vlaprune.adapters.smolvla import keep_kv
from vlaprune.evaluate import closed_loop as cl
from vlaprune.evaluate import schedule
from vlaprune.tiny.smolvla import tiny_smolvla


def chunk(policy):
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        policy.reset()
        return policy.predict_action_chunk(example_batch(policy, 2))


def overridden(policy) -> bool:
    return "forward" in vars(policy.model.vlm_with_expert)


def test_smolvla_runs_the_joint_forward_only_inside(smolvlm_dir):
    policy = tiny_smolvla(smolvlm_dir)
    want = chunk(policy)
    with inference(policy):
        assert overridden(policy)
        got = chunk(policy)
    assert not overridden(policy)  # lerobot's own forward again
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_model_that_runs_it_already_keeps_it(smolvlm_dir):
    policy = tiny_smolvla(smolvlm_dir)
    keep_kv.install(policy.model.vlm_with_expert)
    forward = policy.model.vlm_with_expert.forward
    with inference(policy):
        pass
    assert policy.model.vlm_with_expert.forward == forward


def test_other_families_are_left_alone(pi0):
    before = dict(vars(pi0.model.paligemma_with_expert))
    with inference(pi0):
        assert dict(vars(pi0.model.paligemma_with_expert)) == before


def test_rollouts_schedule_episodes_inside_it(smolvlm_dir, monkeypatch):
    policy, seen = tiny_smolvla(smolvlm_dir), []

    def record(job, sims, seeds):
        seen.append(overridden(job.policy))
        return []

    monkeypatch.setattr(schedule, "scheduled", record)
    try:
        cl.rollouts(policy, None, None, "metaworld", "reach-v3", [100000], env_kw={"max_steps": 2})
    finally:
        cl.close_envs()
    assert seen == [True] and not overridden(policy)
