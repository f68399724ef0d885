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


def test_protocol_levels_below_a_read_out_block():
    """Prismatic reads a vision tower at block depth-2: that block counts as the last, later blocks are dead
    and go too, and the read-out block always stays."""
    assert protocol_blocks("drop_half", 4, readout=2) == [1, 3]  # 0, 2 stay; 3 is dead
    assert protocol_blocks("keep_2", 4, readout=2) == [1, 3]
    assert protocol_blocks("keep_2", 24, readout=22) == [*range(1, 22), 23]  # DINOv2 ViT-L: keeps 0 and 22
    half = protocol_blocks("drop_half", 27, readout=25)  # SigLIP so400m: 25 is odd, and it is read
    assert 25 not in half and half == [*range(1, 25, 2), 26]
    assert protocol_blocks("drop_half", 4, readout=3) == protocol_blocks("drop_half", 4)  # read at the top
