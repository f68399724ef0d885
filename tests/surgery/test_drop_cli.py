"""`vlaprune drop` end to end: explicit indices and --drop.from a scores file; bad input refused."""

import json

import pytest

from vlaprune.cli import main


@pytest.fixture(scope="module")
def smolvla_ckpt(smolvlm_dir, tmp_path_factory):
    from vlaprune.tiny.smolvla import tiny_smolvla

    d = tmp_path_factory.mktemp("src")
    tiny_smolvla(smolvlm_dir).save_pretrained(d)
    return d


@pytest.mark.parametrize(
    "flags, after_blocks, action_drops",
    [
        # default (auto): SmolVLA's language block 1 keeps its K/V for the expert; pair mode refuses it
        (["--drop.language=1"], {"vision": 2, "language": 4, "action": 4}, []),
        (["--drop.language=2,3", "--drop.mode=pair"], {"vision": 2, "language": 2, "action": 2}, [2, 3]),
    ],
)
def test_drop_explicit(flags, after_blocks, action_drops, smolvla_ckpt, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = [
        "drop",
        f"--policy.path={smolvla_ckpt}",
        *flags,
        f"--output_dir={out}",
        "--latency_calls=3",
        "--warmup_calls=1",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "plan" in printed and "FLOPs per action chunk" in printed and "select_action median ms" in printed
    report = json.loads((out / "cost.json").read_text())
    before, after = report["cost_original"], report["cost_pruned"]
    assert after["blocks"] == after_blocks
    assert after["params"] < before["params"] and after["flops_chunk"] < before["flops_chunk"]
    assert 0 < after["flops_forward"] < before["flops_forward"]
    assert after["latency"]["n"] == 3 and after["latency"]["median_ms"] > 0
    plan = json.loads((out / "plan.json").read_text())["plans"][0]
    assert plan["drops"]["action"] == action_drops
    assert plan["mode"] == ("pair" if action_drops else "keep_kv")
    if not action_drops:
        assert plan["kv_only"] == {"language": [1]}
        assert "language 1: kept input norm + k/v projections" in " ".join(printed.split())  # rich wraps
        assert after["params_by_component"]["action"] == before["params_by_component"]["action"]
    # the result is itself a policy path: inspect reads it back (through vlaprune.load)
    assert main(["inspect", f"--policy.path={out}", f"--output={tmp_path / 'a.json'}", "--flops=false"]) == 0
    assert {s["name"]: s["blocks"] for s in json.loads((tmp_path / "a.json").read_text())["stacks"]}[
        "language"
    ] == after_blocks["language"]


def test_drop_from_scores(smolvla_ckpt, tiny_dataset, tmp_path):
    scores = tmp_path / "scores.json"
    assert (
        main(
            [
                "score",
                f"--policy.path={smolvla_ckpt}",
                f"--dataset.root={tiny_dataset}",
                "--calibration.batches=1",
                "--calibration.batch_size=2",
                "--method=position_last",
                f"--output={scores}",
            ]
        )
        == 0
    )
    out = tmp_path / "p"
    args = [
        "drop",
        f"--policy.path={smolvla_ckpt}",
        f"--drop.from={scores}",
        "--drop.k=2",
        "--drop.components=language",
        f"--output_dir={out}",
        "--latency_calls=1",
        "--warmup_calls=0",
    ]
    assert main(args) == 0
    plan = json.loads((out / "plan.json").read_text())["plans"][0]
    assert plan["requested"] == {"language": [2, 3]}  # keep-first truncation drops the last two


def test_drop_bad_input(smolvla_ckpt, tmp_path, cli_error):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    p = f"--policy.path={smolvla_ckpt}"
    cases = [
        (
            [p, "--drop.mode=pair", "--drop.language=1", f"--output_dir={tmp_path / 'o'}"],
            "nearest valid plans",
        ),
        (
            [p, "--drop.mode=keep_kv", "--drop.vision=1", f"--output_dir={tmp_path / 'o'}"],
            "no other stack attends",
        ),
        ([p, "--drop.mode=sideways", "--drop.language=1", f"--output_dir={tmp_path / 'o'}"], "choose one of"),
        ([p, "--drop.language=0,1,2,3", f"--output_dir={tmp_path / 'o'}"], "drops all 4 blocks"),
        ([p, "--drop.vision=7", f"--output_dir={tmp_path / 'o'}"], "out of range"),
        ([p, "--drop.vision=0,0", f"--output_dir={tmp_path / 'o'}"], "listed twice"),
        ([p, "--drop.vision=a", f"--output_dir={tmp_path / 'o'}"], "expected comma-separated block indices"),
        ([p, "--drop.vision=keep_2", f"--output_dir={tmp_path / 'o'}"], "keep_2 of --drop.vision (2 blocks)"),
        (
            [p, "--drop.mode=pair", "--drop.language=drop_half", f"--output_dir={tmp_path / 'o'}"],
            "switch from self-attn",
        ),
        ([p, f"--output_dir={tmp_path / 'o'}"], "nothing to drop"),
        ([p, "--drop.language=2,3"], "--output_dir is required"),
        ([p, "--drop.language=2,3", f"--output_dir={busy}"], "not empty"),
        (
            [p, f"--drop.from={tmp_path / 'none.json'}", "--drop.k=1", f"--output_dir={tmp_path / 'o'}"],
            "no such file",
        ),
    ]
    for args, message in cases:
        assert message in cli_error(["drop", *args]), args
        assert not (tmp_path / "o").exists()


def test_drop_protocol_levels(smolvla_ckpt, tmp_path):
    out = tmp_path / "keep2"
    args = ["drop", f"--policy.path={smolvla_ckpt}", "--drop.language=keep_2", "--drop.vision=drop_half"]
    assert main([*args, f"--output_dir={out}", "--latency_calls=1", "--warmup_calls=0"]) == 0
    plan = json.loads((out / "plan.json").read_text())["plans"][0]
    assert plan["requested"] == {"language": [1, 2], "vision": [1]}  # keeps language 0 and 3; odd vision
    assert plan["kv_only"] == {"language": [1, 2]} and plan["drops"]["action"] == []  # the expert keeps all


def test_drop_sublayers_from_sublayer_scores(smolvla_ckpt, tiny_dataset, tmp_path, cli_error):
    """--drop.part=mlp ranks by the MLP gates' own scores and removes only the MLPs; block scores refused."""
    scores = tmp_path / "scores.json"
    score = [
        "score",
        f"--policy.path={smolvla_ckpt}",
        f"--dataset.root={tiny_dataset}",
        "--calibration.batches=1",
    ]
    args = [*score, "--calibration.batch_size=2", "--method=gateprobe_branch_abs", "--granularity=sublayer"]
    assert main([*args, f"--output={scores}"]) == 0
    mlp = json.loads(scores.read_text())["results"]["gateprobe_branch_abs"]["detail"]["parts"]["mlp"]
    want = sorted(sorted(range(4), key=lambda i: (mlp["action"][i], i))[:2])
    out = tmp_path / "p"
    drop = ["drop", f"--policy.path={smolvla_ckpt}", f"--drop.from={scores}", "--drop.k=2"]
    flags = ["--drop.components=action", "--drop.part=mlp", "--latency_calls=1", "--warmup_calls=0"]
    assert main([*drop, *flags, f"--output_dir={out}"]) == 0
    plan = json.loads((out / "plan.json").read_text())["plans"][0]
    assert plan["part"] == "mlp" and plan["sublayers"] == {"action": want}
    report = json.loads((out / "cost.json").read_text())
    assert report["cost_pruned"]["blocks"] == report["cost_original"]["blocks"]  # every block stays
    assert report["cost_pruned"]["params"] < report["cost_original"]["params"]
    block_scores = tmp_path / "block.json"
    assert (
        main([*score, "--calibration.batch_size=2", "--method=position_last", f"--output={block_scores}"])
        == 0
    )
    bad = ["drop", f"--policy.path={smolvla_ckpt}", f"--drop.from={block_scores}", "--drop.k=1"]
    msg = cli_error([*bad, "--drop.part=attn", f"--output_dir={tmp_path / 'o'}"])
    assert "no per-sublayer scores" in msg and "--granularity=sublayer" in msg
    msg = cli_error(
        [
            "drop",
            f"--policy.path={smolvla_ckpt}",
            "--drop.action=1",
            "--drop.part=mlp",
            "--drop.mode=pair",
            f"--output_dir={tmp_path / 'o'}",
        ]
    )
    assert "leave --drop.mode out" in msg
    msg = cli_error(
        [
            "drop",
            f"--policy.path={smolvla_ckpt}",
            "--drop.action=1",
            "--drop.part=ffn",
            f"--output_dir={tmp_path / 'o'}",
        ]
    )
    assert "choose one of block, attn, mlp" in msg
    assert not (tmp_path / "o").exists()
