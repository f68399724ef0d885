"""How many and which blocks a cut level removes from a stack of n blocks.

Two kinds of level:
  - ranked levels: how many blocks go, the lowest-scoring ones (a method chooses which):
      "0.5"        a fraction of the stack (at least one block)
      "all-but-2"  every block but 2
      "12"         a count (the paper's Drop-12)
  - the paper's metric-free component protocol (DTR paper), the same blocks whatever the scores:
      "drop_half"  remove the odd-indexed blocks (1, 3, 5, ...)
      "keep_2"     keep only the first and the last block
A stack the model reads below its top (Prismatic's vision towers read block depth-2: `Stack.readout`) is cut
as if the read-out block were its last block: the blocks after it are dead (they run for nothing) and go
too, and the read-out block itself always stays (drop_half keeps it even at an odd index; keep_2 keeps the
first block and the read-out block).
"""

from __future__ import annotations

from vlaprune.errors import VlapruneError

PROTOCOL_LEVELS = ("drop_half", "keep_2")


def protocol_blocks(level: str, n: int, where: str = "the stack", readout: int | None = None) -> list[int]:
    """The 0-based blocks a protocol level removes from a stack of n blocks (ascending). readout: the block
    the model reads when it is not the last (see the module docstring), else None."""
    if readout is not None and readout < n - 1:
        kept_top = [i for i in protocol_blocks(level, readout + 1, where) if i != readout]
        return kept_top + list(range(readout + 1, n))
    if level == "drop_half":
        if n < 2:
            raise VlapruneError(
                f"drop_half of {where} ({n} block) removes nothing; it needs at least 2 blocks"
            )
        return list(range(1, n, 2))
    if level == "keep_2":
        if n <= 2:
            raise VlapruneError(f"keep_2 of {where} ({n} blocks) removes nothing; it needs at least 3 blocks")
        return list(range(1, n - 1))
    raise VlapruneError(f"unknown protocol level {level!r}; choose one of {', '.join(PROTOCOL_LEVELS)}")


def level_count(level: str, n: int) -> int:
    """Blocks a ranked level removes from n: a fraction of n (at least 1), "all-but-K" or a count."""
    try:
        if level.startswith("all-but-"):
            return n - int(level.removeprefix("all-but-"))
        if level.isdigit():
            return int(level)
        k = round(float(level) * n)
        return max(1, k) if float(level) > 0 else 0
    except ValueError:
        raise VlapruneError(
            f"level {level!r}: expected a fraction (0.5), a count (12), all-but-K, "
            f"or one of {', '.join(PROTOCOL_LEVELS)}"
        ) from None
