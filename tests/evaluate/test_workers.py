"""A chunk run open loop in a worker renders only the observation that comes back (the policy never sees the
ones in between), and gives what stepping with an observation after every action gives: the same rewards,
end of episode, success and last observation, bit for bit, also when the episode ends inside the chunk."""

import numpy as np
import pytest

from vlaprune.evaluate import envs, workers


def counted(task: str, max_steps: int):
    env = envs.make("metaworld", task, image_size=32, max_steps=max_steps)
    render, env.renders = env._render, 0

    def counting():
        env.renders += 1
        return render()

    env._render = counting
    return env


@pytest.mark.parametrize("max_steps", [150, 3])  # 3: the episode ends on the chunk's third action
def test_chunk_renders_only_the_observation_sent_back(max_steps):
    actions = [np.array([0.6, -0.4, 0.3 * np.sin(k), 1.0], np.float32) for k in range(5)]
    blind, seen = counted("reach-v3", max_steps), counted("reach-v3", max_steps)
    workers._run(blind, "reset", 100000)
    workers._run(seen, "reset", 100000)
    before = blind.renders
    obs, rewards, term, trunc, success, frames = workers._run(blind, "steps", (actions, False))
    assert blind.renders - before == 1 and frames == []
    want = [seen.step(a) for a in actions[: len(rewards)]]
    assert len(rewards) == min(5, max_steps)
    assert rewards == [float(w[1]) for w in want]
    assert (term, trunc, success) == (want[-1][2], want[-1][3], want[-1][4]["success"])
    assert np.array_equal(obs["pixels"], want[-1][0]["pixels"])
    assert np.array_equal(obs["agent_pos"], want[-1][0]["agent_pos"])
    assert not np.array_equal(obs["agent_pos"], workers._run(seen, "reset", 100000)[0]["agent_pos"])  # moved
    # frames wanted (a video): every observation rendered, as before
    workers._run(blind, "reset", 100000)
    before = blind.renders
    *_, frames = workers._run(blind, "steps", (actions, True))
    assert blind.renders - before == len(frames) + 1 == min(5, max_steps)
    blind.close(), seen.close()
