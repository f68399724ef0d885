"""Cut levels: the paper's metric-free drop_half / keep_2, and ranked levels (fraction, count, all-but-K)."""

import pytest

from vlaprune.errors import VlapruneError
from vlaprune.surgery.levels import level_count, protocol_blocks


def test_protocol_levels():
    assert protocol_blocks("drop_half", 4) == [1, 3]  # the odd-indexed blocks
    assert protocol_blocks("drop_half", 5) == [1, 3]
    assert protocol_blocks("keep_2", 4) == [1, 2]  # keeps 0 and 3
    assert protocol_blocks("keep_2", 18) == list(range(1, 17))  # 16 of 18 go, as Drop-16 on pi0.5
    with pytest.raises(VlapruneError, match="drop_half of the stack .1 block. removes nothing"):
        protocol_blocks("drop_half", 1)
    with pytest.raises(VlapruneError, match="keep_2 of the stack .2 blocks. removes nothing"):
        protocol_blocks("keep_2", 2)


def test_ranked_levels():
    assert [level_count(x, 16) for x in ("0.5", "all-but-2", "12", "0.01")] == [8, 14, 12, 1]
    with pytest.raises(VlapruneError, match="expected a fraction"):
        level_count("half", 16)
