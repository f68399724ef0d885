"""The data layer: one LeRobotDataset per command, splits per task, frames of a split equal a dataset opened
on just those episodes."""

import pytest
import torch

from vlaprune.cli import main
from vlaprune.configs import DatasetConfig
from vlaprune.data import Data
from vlaprune.policy import wrap


@pytest.fixture
def constructions(monkeypatch):
    """How many LeRobotDatasets were constructed while the test ran."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    count = [0]
    init = LeRobotDataset.__init__

    def counting(self, *a, **k):
        count[0] += 1
        return init(self, *a, **k)

    monkeypatch.setattr(LeRobotDataset, "__init__", counting)
    return count


def test_eval_offline_with_holdout_and_closed_loop_opens_the_dataset_once(
    tiny_dataset, tmp_path, constructions
):
    args = [
        "eval",
        "--policy.path=tiny:smolvla",
        f"--dataset.root={tiny_dataset}",
        "--offline=true",
        "--holdout=0.34",
        "--env.type=metaworld",
        "--env.task=reach-v3",
        "--env.max_steps=2",
        "--eval.n_episodes=1",
        f"--output={tmp_path / 'eval.json'}",
    ]
    assert main(args) == 0
    assert constructions[0] == 1


def test_prune_units_opens_the_dataset_once(tiny_dataset, tmp_path, constructions):
    args = [
        "prune-units",
        "--policy.path=tiny:smolvla",
        f"--dataset.root={tiny_dataset}",
        "--ratios=language.mlp=0.25",
        "--compare=magnitude",
        "--batches=1",
        "--batch_size=4",
        f"--output_dir={tmp_path / 'pruned'}",
    ]
    assert main(args) == 0
    assert constructions[0] == 1


def test_split_frames_equal_a_dataset_opened_on_those_episodes(smolvla, tiny_dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    data = Data(wrap(smolvla), DatasetConfig(root=str(tiny_dataset)))
    train, held = data.split(0.34)
    assert (train, held) == ([0, 1], [2])  # the last episode of the task with 2+ episodes is held out
    frames = data.frames(held)
    direct = LeRobotDataset(
        data.dataset.repo_id, root=tiny_dataset, episodes=held, delta_timestamps=data.dataset.delta_timestamps
    )
    assert len(frames) == len(direct)
    for i in (0, len(direct) - 1):
        a, b = frames[i], direct[i]
        assert a["episode_index"] == b["episode_index"] == 2
        assert torch.equal(a["action"], b["action"]) and a["index"] == b["index"]
