"""Training checkpoints that survive a crash: written to a temp folder, renamed, then `last` updated.

    <output_dir>/checkpoints/000300/trainee.safetensors   every weight of the trained module (safetensors)
                                  /training_state/          lerobot's: optimizer, scheduler, RNG, step
    <output_dir>/checkpoints/last                           the newest complete checkpoint (text file)
A resumed run rebuilds the same module and loads `trainee.safetensors` strictly: a checkpoint from another
model (other parameter names or shapes) is refused.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from vlaprune.atomic import atomic_dir
from vlaprune.errors import VlapruneError

WEIGHTS = "trainee.safetensors"


def save(
    ckpt_root: Path, step: int, total: int, module: nn.Module, optimizer, scheduler, *, batch_size: int
) -> Path:
    """Write checkpoint `step` of `total` (the module's weights + lerobot's training state) and point `last`
    at it; a crash mid-write leaves the previous checkpoint as `last`."""
    from lerobot.common.train_utils import get_step_identifier, save_training_state
    from safetensors.torch import save_model

    final = ckpt_root / get_step_identifier(step, total)
    with atomic_dir(final, replace=True) as tmp:
        save_model(module, str(tmp / WEIGHTS))
        save_training_state(tmp, step, optimizer, scheduler, num_processes=1, batch_size=batch_size)
    last = ckpt_root / "last"
    last_tmp = ckpt_root / ".last.tmp"
    last_tmp.write_text(final.name)
    last_tmp.replace(last)
    return final


def latest(ckpt_root: Path) -> Path | None:
    last = ckpt_root / "last"
    if not last.is_file():
        return None
    path = ckpt_root / last.read_text().strip()
    return path if (path / WEIGHTS).is_file() else None


def restore(ckpt: Path, module: nn.Module, optimizer, scheduler) -> int:
    """Load weights (strict), optimizer, scheduler and RNG states; return the step the checkpoint ended."""
    from lerobot.common.train_utils import load_training_state
    from safetensors.torch import load_model

    try:
        load_model(module, str(ckpt / WEIGHTS), strict=True)
    except Exception as e:
        msg = " ".join(str(e).split())[:240]
        raise VlapruneError(
            f"cannot resume from {ckpt}: it was written for another model or mode ({msg}); "
            "use a new --output_dir or the same --policy.path and --mode"
        ) from None
    step, _, _ = load_training_state(ckpt, optimizer, scheduler)
    return step
