"""The data layer: one LeRobotDataset per command, splits per task, frames of a split equal a dataset opened
on just those episodes."""

import pytest
import torch

from vlaprune.cli import main
from vlaprune.configs import DatasetConfig, PolicyConfig
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
        "--calibration.batches=1",
        "--calibration.batch_size=4",
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


def test_train_validation_test_splits_per_task(smolvla, tmp_path):
    from vlaprune.errors import VlapruneError
    from vlaprune.tiny.dataset import write_tiny_dataset

    root = write_tiny_dataset(tmp_path / "six", episodes=6, frames=6)  # tasks alternate: A 0,2,4; B 1,3,5
    data = Data(wrap(smolvla), DatasetConfig(root=str(root)))
    parts = data.splits(test=0.34, validation=0.34)
    assert (parts.train, parts.validation, parts.test) == ([0, 1], [2, 3], [4, 5])  # per task, last = test
    assert data.split(0.34) == ([0, 1, 2, 3], [4, 5])
    assert data.splits() == type(parts)([0, 1, 2, 3, 4, 5], [], [])
    chosen = Data(wrap(smolvla), DatasetConfig(root=str(root), episodes=[0, 1, 2, 4]))
    parts = chosen.splits(test=0.34)  # --dataset.episodes: the split is made inside the chosen episodes
    assert (parts.train, parts.test) == ([0, 1, 2], [4])  # task B has one chosen episode: it trains
    for kw, msg in [
        ({"test": 0.5, "validation": 0.5}, "leave episodes to train on"),
        ({"test": 1.0}, "--holdout=1.0"),
        ({"validation": -0.1}, "--validation=-0.1"),
    ]:
        with pytest.raises(VlapruneError, match=msg):
            data.splits(**kw)
    two = Data(wrap(smolvla), DatasetConfig(root=str(root), episodes=[0, 2]))
    with pytest.raises(VlapruneError, match="validation split"):
        two.splits(test=0.5, validation=0.5 - 1e-9)


def test_recovered_checkpoint_records_its_training_episodes_and_eval_refuses_them(
    tiny_dataset, tmp_path, cli_error
):
    from vlaprune.policy import load_policy
    from vlaprune.recover.train import RecoverConfig, run

    run(
        RecoverConfig(
            policy=PolicyConfig(path="tiny:smolvla"),
            dataset=DatasetConfig(root=str(tiny_dataset)),
            output_dir=str(tmp_path / "r"),
            steps=1,
            batch_size=2,
            holdout=0.34,
        )
    )
    final = tmp_path / "r" / "final"
    trained = load_policy(final).record.trained_on
    assert trained == [{"dataset": f"local/{tiny_dataset.name}", "episodes": [0, 1]}]  # episode 2 held out
    out = tmp_path / "e.json"
    common = [f"--policy.path={final}", f"--dataset.root={tiny_dataset}", "--offline=true", f"--output={out}"]
    assert main(["eval", *common, "--holdout=0.34", "--max_batches=1"]) == 0  # episode 2: truly held out
    out.unlink()
    for bad in (["--dataset.episodes=[1]"], ["--dataset.episodes=[0,1]"]):
        assert "trained on" in cli_error(["eval", *common, *bad], only=False), bad
        assert not out.exists()


def test_degenerate_quantiles_are_warned_about(caplog):
    """pi0.5 normalizes actions by q01 / q99; the demo data's gripper action has q01 == q99, which lerobot
    would divide by ~0. pi0 (mean / std) is not affected."""
    import json

    from vlaprune.data import warn_degenerate_quantiles
    from vlaprune.experiments import assets
    from vlaprune.tiny.pi import tiny_pi_config

    stats = json.loads((assets.ASSETS / "dataset/meta/stats.json").read_text())
    with caplog.at_level("WARNING", logger="vlaprune"):
        assert warn_degenerate_quantiles(tiny_pi_config("pi05"), stats) == ["action"]
    assert "q01 == q99 in dimension(s) [3]" in caplog.text
    assert warn_degenerate_quantiles(tiny_pi_config("pi0"), stats) == []
