"""One block selection (`surgery/select.py`) for `vlaprune drop --drop.from`, the DTR sweep and the demo: the
same scores and level cut the same blocks everywhere, also where the k lowest-scoring blocks are not the
cheapest valid plan (a coupled partner that matters more than the blocks it spares)."""

import json

import pytest

from vlaprune.cli import main
from vlaprune.errors import VlapruneError
from vlaprune.policy import load_policy
from vlaprune.surgery.select import choices, select_blocks

# pi0 in pair mode drops a language block with its expert partner: the last language block scores lowest,
# but its partner scores 100, so the cheapest valid 1-block plan is block 2 (cost 4), not block 3 (cost 100)
SCORES = {"language": [5.0, 4.0, 3.0, 0.0], "action": [1.0, 1.0, 1.0, 100.0]}


def scores_file(path, scores):
    path.write_text(json.dumps({"method": "m", "results": {"m": {"scores": scores}}}))
    return path


def dropped(folder) -> dict[str, list[int]]:
    """The blocks the saved plan cut: removed whole, kept as K/V only, or skipped in place."""
    plan = json.loads((folder / "plan.json").read_text())["plans"][-1]
    out: dict[str, list[int]] = {}
    for key in ("drops", "kv_only", "skipped"):
        for s, idx in (plan.get(key) or {}).items():
            out[s] = sorted(set(out.get(s, [])) | set(idx))
    return {s: idx for s, idx in out.items() if idx}


@pytest.mark.parametrize(
    "mode, k, expected",
    [
        ("pair", 1, {"language": [2], "action": [2]}),  # not the k lowest ({"language": [3]} + partner)
        ("pair", 2, {"language": [1, 2], "action": [1, 2]}),
        ("auto", 1, {"language": [3]}),  # keep-K/V: no partner, so the k lowest
        ("auto", 2, {"language": [2, 3]}),
    ],
)
def test_drop_from_and_dtr_cut_the_same_blocks(mode, k, expected, tmp_path):
    lay = load_policy("tiny:pi0").layout()
    lowest = sorted(range(4), key=lambda i: SCORES["language"][i])[:k]
    _, [(method, dtr_drops)] = choices(
        lay, "language", str(k), "block", mode, scores={"m": SCORES}, sub_scores={}
    )
    assert method == "m" and dtr_drops == expected
    assert select_blocks(lay, "language", SCORES, k, mode) == expected
    if mode == "pair":
        assert expected["language"] != sorted(lowest)  # the case where the k lowest are not the plan
    out = tmp_path / "cut"
    args = [
        "drop",
        "--policy.path=tiny:pi0",
        f"--drop.from={scores_file(tmp_path / 's.json', SCORES)}",
        f"--drop.k={k}",
        "--drop.components=language",
        f"--drop.mode={mode}",
        f"--output_dir={out}",
        "--latency_calls=1",
        "--warmup_calls=0",
    ]
    assert main(args) == 0
    assert dropped(out) == expected


def test_levels_and_sublayers():
    lay = load_policy("tiny:pi0").layout()
    assert select_blocks(lay, "language", SCORES, "0.5", "auto") == {"language": [2, 3]}
    assert select_blocks(lay, "language", {}, "drop_half", "auto") == {"language": [1, 3]}
    # sublayer drops keep every block in place: the k lowest of that sublayer's scores, no partners
    assert select_blocks(lay, "language", SCORES, 1, "auto", part="mlp") == {"language": [3]}
    _, [(_, sub)] = choices(lay, "language", "1", "mlp", "auto", scores={}, sub_scores={"m": {"mlp": SCORES}})
    assert sub == {"language": [3]}


def test_several_stacks_ranked_together():
    lay = load_policy("tiny:pi0").layout()
    scores = {"language": [5.0, 4.0, 3.0, 0.5], "action": [1.0, 0.1, 2.0, 3.0]}
    # auto: both stacks drop in place (keep-K/V language, action-only expert): the 2 lowest over both
    assert select_blocks(lay, ["language", "action"], scores, 2, "auto") == {"language": [3], "action": [1]}


def test_vision_component_of_oft_is_both_towers(oft):
    from vlaprune.surgery.select import check_component, choices, n_blocks, partners, stacks_of

    lay = oft.layout()
    assert stacks_of(lay, "vision") == ["vision.dino", "vision.siglip"] and n_blocks(lay, "vision") == 8
    assert set(partners(lay, "vision")) == {"vision.dino", "vision.siglip"}
    k, [(m, drops)] = choices(lay, "vision", "drop_half", "block", "auto", scores={}, sub_scores={})
    assert m == "protocol" and drops == {"vision.dino": [1, 3], "vision.siglip": [1, 3]} and k == 4
    # ranked together: the read-out block (2) never goes, however low it scores
    scores = {"s": {"vision.dino": [5.0, 4.0, 0.1, 0.0], "vision.siglip": [3.0, 2.0, 0.2, 0.0]}}
    k, [(_, drops)] = choices(lay, "vision", "0.5", "block", "auto", scores=scores, sub_scores={})
    assert k == 4 and drops == {"vision.dino": [3], "vision.siglip": [0, 1, 3]}  # 0.1 / 0.2 stay
    assert all(2 not in v for v in drops.values())
    with pytest.raises(VlapruneError, match="unknown component 'audio'"):
        check_component(lay, "audio")
