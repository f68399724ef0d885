"""The configs several stages share, parsed from lerobot-style flags (`--policy.path=...`) by draccus.

Each command's own config (one dataclass per stage) lives beside its `run(cfg)`; these are the parts they
have in common: which policy, which dataset, which simulator, and how closed-loop episodes run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlaprune.errors import VlapruneError

ENV_TYPES = ("metaworld", "pusht", "libero")  # vlaprune.evaluate.envs.ENVS has one entry per name
# The held-out fraction of each task's episodes, the same default for recover, eval, prune-units and dtr:
# recover trains on the first 80%, and every later command evaluates on the last 20% with no flag.
HOLDOUT = 0.2


@dataclass
class PolicyConfig:
    # Required: a checkpoint folder, a hub id (org/name), or a built-in tiny model with random weights
    # (tiny:smolvla, tiny:pi0, ...: only when named; never a silent default).
    path: str = ""
    # Allow transformers remote code (OpenVLA / Prismatic checkpoints ship their modeling code).
    trust_remote_code: bool = False
    # Where the model runs: cpu, cuda, cuda:N, mps. Empty: where it loads (lerobot checkpoints: their
    # config's device, or the best available one; built-in tiny models: cpu).
    device: str = ""
    # OpenVLA folder + a freshly initialised OFT action head: l1 or diffusion (seeded, at the LLM's width,
    # with a proprio projector, as OFT's finetune.py builds them); the folder must run OFT's model code.
    oft_head: str = ""


@dataclass
class DatasetConfig:
    # LeRobotDataset repo id (e.g. lerobot/libero_spatial); with `root`, read from that local folder.
    repo_id: str = ""
    # Local dataset folder (holds meta/info.json); nothing is downloaded when it exists.
    root: str | None = None
    # Episodes to use (default: all).
    episodes: list[int] | None = None

    @property
    def given(self) -> bool:
        return bool(self.repo_id or self.root)


@dataclass
class EnvConfig:
    # Simulator for closed-loop episodes. metaworld: MetaWorld (tasks like reach-v3, door-open-v3);
    # pusht: PushT (PushT-v0); libero: LIBERO through lerobot's LiberoEnv (suites libero_spatial,
    # libero_object, libero_goal, libero_10, libero_90, each meaning all its tasks, or single tasks SUITE/ID
    # such as libero_spatial/3, ids from 0).
    type: str = ""
    # Tasks (names as --env.type says), a list: --env.task=reach-v3,door-open-v3 (or draccus's [a,b]).
    task: list[str] = field(default_factory=list)
    # Episode cap (default: the env's own: MetaWorld 150, PushT 300, LIBERO lerobot's per suite, e.g. 280).
    max_steps: int = 0
    # Camera image side in pixels (default: the env's own: MetaWorld 64, PushT 96, LIBERO 256).
    image_size: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.task, str):  # Python callers of older versions: EnvConfig(task="a,b")
            self.task = [t.strip() for t in self.task.split(",")]
        self.task = [t for t in self.task if t]
        if self.type and self.type not in ENV_TYPES:
            raise VlapruneError(f"unknown --env.type={self.type!r}; choose one of {', '.join(ENV_TYPES)}")
        if self.type and not self.task:
            raise VlapruneError("--env.task is required with --env.type (task names, e.g. --env.task=a,b)")

    def task_names(self) -> list[str]:
        return list(self.task)

    def kwargs(self) -> dict[str, int]:
        """The env's keyword arguments that the flags set (unset flags keep each env's defaults)."""
        return {k: v for k, v in (("max_steps", self.max_steps), ("image_size", self.image_size)) if v}


@dataclass
class CalibrationConfig:
    """The calibration batches a command scores on (`--calibration.*`: score, prune-units, dtr), drawn from
    the training episodes with the command's seed."""

    # Number of calibration batches.
    batches: int = 4
    # Frames per calibration batch.
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.batches < 1:
            raise VlapruneError(f"--calibration.batches={self.batches}: need at least one calibration batch")
        if self.batch_size < 1:
            raise VlapruneError(
                f"--calibration.batch_size={self.batch_size}: need at least one frame per batch"
            )


@dataclass
class EpisodesConfig:
    """Closed-loop episodes (`--eval.*`), the same options for eval, dtr, prune-units and the demo."""

    # Episodes per task.
    n_episodes: int = 10
    # The first episode's seed: episodes use seed, seed + 1, ... (from 100000: seeds demo recording never
    # uses).
    seed: int = 100_000
    # Simulators stepped in parallel (processes), with one batched policy call per step.
    n_envs: int = 1
    # Sequential paired verdicts (dtr, prune-units, demo; evaluate/sequential.py): a model compared with the
    # baseline runs n_episodes per task, then rounds of round_episodes more until the comparison is decided,
    # at most max_episodes per task (the baseline runs the seeds the longest comparison needs).
    sequential: bool = False
    # Episodes per task added in each sequential round.
    round_episodes: int = 5
    # At most this many episodes per task with --eval.sequential.
    max_episodes: int = 50

    def __post_init__(self) -> None:
        if self.n_episodes < 1:
            raise VlapruneError(f"--eval.n_episodes={self.n_episodes}: need at least one episode")
        if self.sequential and (self.round_episodes < 1 or self.max_episodes < self.n_episodes):
            raise VlapruneError(
                f"--eval.sequential: need --eval.round_episodes >= 1 (got {self.round_episodes}) and "
                f"--eval.max_episodes >= --eval.n_episodes (got {self.max_episodes} < {self.n_episodes})"
            )
        last = max(self.n_episodes, self.max_episodes if self.sequential else 0)
        if not 0 <= self.seed <= 2**31 - 1 - last:
            raise VlapruneError(
                f"--eval.seed={self.seed}: episode seeds must lie in [0, 2^31) (simulators take unsigned "
                "seeds); pass a seed >= 0"
            )
        if self.n_envs < 1:
            raise VlapruneError(f"--eval.n_envs={self.n_envs}: need at least one simulator")

    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.n_episodes))

    def looks(self) -> list[int]:
        """Episodes per task at each look of a sequential comparison."""
        return looks(self.n_episodes, self.round_episodes, self.max_episodes)


def looks(first: int, round_episodes: int, max_episodes: int) -> list[int]:
    """Episodes per task at each look: `first`, then every `round_episodes` more, up to `max_episodes`."""
    if first < 1 or round_episodes < 1 or max_episodes < first:
        raise VlapruneError(
            f"sequential looks need 1 <= first ({first}) <= max ({max_episodes}) and a round >= 1 "
            f"({round_episodes})"
        )
    out = list(range(first, max_episodes + 1, round_episodes))
    return out if out[-1] == max_episodes else [*out, max_episodes]
