"""OpenVLA-OFT in closed loop on LIBERO as OFT's run_libero_eval.py runs it: every transformation against
values computed by hand (or by TensorFlow, for the resampling), the chunked policy on the tiny OFT mirror, one
LIBERO episode through `vlaprune eval`, and bad input refused in one line."""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlaprune.adapters import closed_loop_policy
from vlaprune.adapters.openvla.closed_loop import (
    OFT_MAX_STEPS,
    center_crop,
    gripper,
    lanczos3_weights,
    normalize_proprio,
    prompt_ids,
    resize,
    tower_pixels,
    unnorm_key,
    unnormalize,
)
from vlaprune.cli import main
from vlaprune.errors import VlapruneError
from vlaprune.evaluate.closed_loop import close_envs

TASK0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"
# A 12 x 12 image through OFT's resize_image_for_policy (tf.image.encode_jpeg + decode_image + resize lanczos3
# antialias to 8 x 8, rounded, clipped), then through its center_crop_image (crop_and_resize, 0.9 area)
RESIZED = [  # TensorFlow 2.21's output
    41,
    94,
    133,
    132,
    158,
    166,
    107,
    103,
    89,
    170,
    172,
    159,
    97,
    135,
    124,
    128,
    111,
    134,
    164,
    119,
    143,
    142,
    127,
    119,
    114,
    172,
    147,
    62,
    107,
    114,
    134,
    147,
    160,
    121,
    113,
    97,
    154,
    159,
    146,
    130,
    140,
    142,
    151,
    137,
    156,
    113,
    69,
    99,
    141,
    147,
    120,
    121,
    143,
    151,
    101,
    128,
    130,
    107,
    116,
    83,
    155,
    144,
    144,
    121,
    134,
    130,
    123,
    124,
    125,
    172,
    126,
    154,
    112,
    70,
    97,
    164,
    139,
    152,
    80,
    90,
    66,
    149,
    182,
    137,
    100,
    110,
    110,
    120,
    113,
    122,
    109,
    96,
    89,
    164,
    149,
    132,
    101,
    127,
    125,
    124,
    100,
    123,
    148,
    112,
    132,
    111,
    122,
    100,
    110,
    146,
    97,
    118,
    125,
    126,
    147,
    131,
    149,
    87,
    76,
    58,
    141,
    162,
    108,
    143,
    129,
    110,
    145,
    134,
    156,
    87,
    113,
    136,
    158,
    167,
    142,
    144,
    116,
    102,
    104,
    88,
    87,
    110,
    139,
    127,
    151,
    139,
    115,
    145,
    131,
    88,
    98,
    103,
    83,
    137,
    164,
    190,
    93,
    100,
    120,
    180,
    152,
    144,
    134,
    108,
    90,
    149,
    154,
    144,
    96,
    73,
    123,
    192,
    171,
    142,
    142,
    125,
    67,
    123,
    126,
    124,
    75,
    115,
    151,
    135,
    150,
    162,
    151,
    115,
    101,
    169,
    104,
    91,
]

CROPPED = [  # TensorFlow 2.21's output
    65,
    115,
    139,
    118,
    144,
    149,
    115,
    115,
    105,
    160,
    161,
    147,
    108,
    140,
    128,
    126,
    118,
    135,
    157,
    121,
    144,
    141,
    117,
    121,
    109,
    158,
    139,
    77,
    116,
    123,
    129,
    142,
    151,
    120,
    114,
    96,
    153,
    156,
    144,
    131,
    140,
    141,
    145,
    136,
    150,
    125,
    87,
    114,
    136,
    141,
    124,
    121,
    140,
    148,
    100,
    125,
    122,
    111,
    121,
    88,
    150,
    141,
    140,
    123,
    133,
    130,
    122,
    123,
    123,
    162,
    126,
    147,
    121,
    83,
    107,
    152,
    132,
    140,
    87,
    97,
    73,
    147,
    179,
    135,
    101,
    112,
    110,
    118,
    113,
    121,
    111,
    99,
    94,
    152,
    138,
    123,
    105,
    121,
    124,
    128,
    102,
    124,
    143,
    112,
    128,
    112,
    124,
    101,
    110,
    144,
    97,
    117,
    126,
    123,
    142,
    129,
    144,
    99,
    87,
    75,
    138,
    153,
    109,
    142,
    127,
    116,
    141,
    131,
    152,
    90,
    115,
    133,
    152,
    164,
    138,
    143,
    120,
    106,
    111,
    94,
    93,
    108,
    126,
    116,
    149,
    140,
    110,
    139,
    127,
    91,
    106,
    111,
    99,
    130,
    156,
    181,
    102,
    110,
    124,
    170,
    144,
    137,
    136,
    111,
    96,
    141,
    143,
    132,
    120,
    99,
    123,
    177,
    158,
    124,
    133,
    122,
    75,
    124,
    132,
    136,
    79,
    113,
    145,
    138,
    147,
    158,
    147,
    118,
    106,
    162,
    113,
    100,
]


def pattern() -> np.ndarray:
    i, j, c = np.meshgrid(np.arange(12), np.arange(12), np.arange(3), indexing="ij")
    return ((i * 37 + j * 91 + c * 53 + (i // 4) * 60) % 256).astype(np.uint8)


def test_resize_and_crop_equal_tensorflows():
    np.testing.assert_array_equal(resize(pattern(), 8).reshape(-1), RESIZED)
    np.testing.assert_array_equal(
        center_crop(np.asarray(RESIZED, np.uint8).reshape(8, 8, 3)).reshape(-1), CROPPED
    )


def test_lanczos3_weights_by_hand():
    """4 -> 2 pixels: output 0 samples the input at 1.0, kernel scale 2: distances 0.25, 0.25, 0.75, 1.25."""
    lanczos = lambda x: 3 * math.sin(math.pi * x) * math.sin(math.pi * x / 3) / (math.pi * x) ** 2  # noqa: E731
    k = [lanczos(d) for d in (0.25, 0.25, 0.75, 1.25)]
    np.testing.assert_allclose(lanczos3_weights(4, 2)[0], [v / sum(k) for v in k], rtol=1e-6)


def test_center_crop_of_a_ramp_by_hand():
    """Bilinear sampling of a linear ramp is exact: column j shows the ramp at TF's sample position."""
    s = 224
    ramp = np.broadcast_to(np.arange(s, dtype=np.uint8)[None, :, None], (s, s, 3)).copy()
    side = math.sqrt(0.9)
    want = [int((((1 - side) / 2) * (s - 1) + j * side) / 255 * 255.5) for j in range(s)]
    out = center_crop(ramp)
    assert np.abs(out[0, :, 0].astype(int) - want).max() <= 1 and (out[0, :, 0] == want).mean() > 0.95
    assert (out == out[:1]).all()  # rows alike


def test_tower_pixels_normalize_per_tower():
    """Per tower: resized to its input (a flat image stays flat), / 255, then (x - mean) / std."""
    img = np.full((224, 224, 3), 51, np.uint8)
    px = tower_pixels(
        img, [(16, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]), (16, [0.2, 0.1, 0.0], [1.0, 1.0, 2.0])]
    )
    assert px.shape == (6, 16, 16)
    want = [(0.2 - 0.5) / 0.25] * 3 + [0.0, 0.1, 0.1]
    torch.testing.assert_close(px.mean((1, 2)), torch.tensor(want))
    torch.testing.assert_close(px.std((1, 2)), torch.zeros(6))


def test_state_action_and_gripper_by_hand():
    stats = {"q01": [-1.0, 0.0, 5.0], "q99": [1.0, 2.0, 7.0], "mask": [True, True, False]}
    state = np.array([0.5, 3.0, 0.25])
    np.testing.assert_allclose(normalize_proprio(state, stats), [0.5, 1.0, 0.25], atol=1e-7)  # 2 -> clipped
    np.testing.assert_allclose(normalize_proprio(np.array([0, 1, 4.0]), stats), [0, 0, 1.0], atol=1e-7)
    actions = np.array([[-1.0, 0.5, 0.7], [1.0, -0.5, 0.2]])
    np.testing.assert_allclose(unnormalize(actions, stats), [[-1.0, 1.5, 0.7], [1.0, 0.5, 0.2]], atol=1e-7)
    # gripper: [0, 1] -> sign(2 g - 1), then inverted for the openvla family (LIBERO: -1 open, +1 close)
    np.testing.assert_array_equal(gripper(np.array([[0, 0, 0.7], [0, 0, 0.2]]))[:, -1], [-1.0, 1.0])


def test_unnorm_key_is_ofts():
    assert unnorm_key({"libero_spatial_no_noops": {}}, "libero_spatial") == "libero_spatial_no_noops"
    assert unnorm_key({"libero_goal": {}, "libero_goal_no_noops": {}}, "libero_goal") == "libero_goal"
    with pytest.raises(VlapruneError, match="have: libero_spatial_no_noops, bridge_orig"):
        unnorm_key({"libero_spatial_no_noops": {}, "bridge_orig": {}}, "libero_object")


def test_prompt_is_ofts(oft):
    from vlaprune.adapters.openvla.batch import PROMPT

    tok = closed_loop_policy(oft.module, "libero", "libero_spatial/0").tok
    ids = prompt_ids(tok, "Put the BOWL on the plate")
    assert tok.decode(ids) == "<s>In: What action should the robot take to put the bowl on the plate?\nOut: "
    train = tok(PROMPT.format("put the bowl on the plate"), add_special_tokens=False).input_ids
    assert ids == [tok.bos_token_id] + train  # what the training batches hold before the action tokens

    class Llama:  # Llama-2's tokenizer: "Out:" ends on ":", OFT appends "▁" (29871)
        bos_token_id, unk_token_id = 1, 0

        def __call__(self, text, add_special_tokens):
            return SimpleNamespace(input_ids=[10, 11, 12])

        def convert_tokens_to_ids(self, token):
            return 29871 if token == "▁" else 0

    assert prompt_ids(Llama(), "x") == [1, 10, 11, 12, 29871]


def test_chunk_runs_open_loop_and_equals_ofts_pipeline_by_hand(oft):
    policy = oft.module
    cl = closed_loop_policy(policy, "libero", "libero_spatial/0")
    assert cl.env_defaults == {"max_steps": OFT_MAX_STEPS["libero_spatial"]} == {"max_steps": 220}
    gen = torch.Generator().manual_seed(0)
    cams = [(torch.randint(0, 256, (1, 3, 256, 256), generator=gen) / 255).float() for _ in range(2)]
    batch = {"task": [TASK0], "observation.images.image": cams[0], "observation.images.image2": cams[1]}
    batch["observation.state"] = torch.rand(1, 8, generator=gen)
    stats = json.loads((oft.folder / "dataset_statistics.json").read_text())["libero_spatial_no_noops"]

    # by hand: uint8 frames -> JPEG + lanczos to 224 -> crop -> per-tower 32 px, normalized; the mirror's own
    # predict_action (remote code) on <s> + prompt; q01 / q99 un-normalization; gripper binarized, inverted
    towers = [(32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), (32, [0.5] * 3, [0.5] * 3)]
    frames = [(c[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for c in cams]
    pixels = torch.cat([tower_pixels(center_crop(resize(f)), towers) for f in frames])[None]
    lo, hi = np.array(stats["proprio"]["q01"]), np.array(stats["proprio"]["q99"])
    s = batch["observation.state"][0].double().numpy()
    proprio = np.clip(np.where(stats["proprio"]["mask"], 2 * (s - lo) / (hi - lo + 1e-8) - 1, s), -1, 1)
    ids = torch.tensor([prompt_ids(cl.tok, TASK0)])
    policy.vla.vision_backbone.set_num_images_in_input(2)  # as OFT's get_vla sets it (num_images_in_input)
    norm = policy.vla.predict_action(
        ids,
        pixels,
        torch.ones_like(ids, dtype=torch.bool),
        proprio=torch.tensor(proprio, dtype=torch.float32)[None],
        proprio_projector=policy.proprio_projector,
        action_head=policy.action_head,
    )[0].numpy()
    a_lo, a_hi = np.array(stats["action"]["q01"]), np.array(stats["action"]["q99"])
    want = np.where(stats["action"]["mask"], 0.5 * (norm + 1) * (a_hi - a_lo + 1e-8) + a_lo, norm)
    want[:, -1] = -np.sign(2 * want[:, -1] - 1)

    calls = []
    predict = cl.predict_chunk
    cl.predict_chunk = lambda b: calls.append(1) or predict(b)
    got = np.stack([cl.select_action(batch)[0].numpy() for _ in range(9)])
    assert len(calls) == 2  # 8 actions open loop, then a new chunk
    np.testing.assert_allclose(got[:8], want, rtol=1e-4, atol=1e-5)
    cl.reset()
    cl.select_action(batch)
    assert len(calls) == 3  # a reset drops the rest of the chunk


def test_eval_runs_oft_on_a_libero_episode(oft_dir, tmp_path):
    out = tmp_path / "eval.json"
    args = ["eval", f"--policy.path={oft_dir}", "--policy.trust_remote_code=true", "--env.type=libero"]
    args += ["--env.task=libero_spatial/0", "--env.max_steps=3", "--eval.n_episodes=1", f"--output={out}"]
    try:
        assert main(args) == 0
    finally:
        close_envs()
    task = json.loads(out.read_text())["closed_loop"]["normal"]["tasks"]["libero_spatial/0"]
    assert task["instruction"] == TASK0 and task["episodes"] == 1
    assert task["episodes_detail"][0]["steps"] <= 3 and task["episodes_detail"][0]["seed"] == 100_000


def test_bad_oft_folders_are_one_line(oft_dir, tmp_path, cli_error):
    def eval_(folder, task="libero_spatial/0"):
        out = tmp_path / "never.json"
        line = cli_error(
            [
                "eval",
                f"--policy.path={folder}",
                "--policy.trust_remote_code=true",
                "--env.type=libero",
                f"--env.task={task}",
                f"--output={out}",
            ],
            only=False,
        )
        assert not out.exists()
        return line

    assert "unnorm key 'libero_object' (nor libero_object_no_noops)" in eval_(oft_dir, "libero_object/0")
    assert "they have: libero_spatial_no_noops" in eval_(oft_dir, "libero_object/0")
    no_stats = shutil.copytree(oft_dir, tmp_path / "no-stats")
    (no_stats / "dataset_statistics.json").unlink()
    assert "has no dataset_statistics.json" in eval_(no_stats)
    no_head = shutil.copytree(oft_dir, tmp_path / "no-head")
    next(no_head.glob("action_head--*")).unlink()
    assert "no action_head--<step>_checkpoint.pt" in eval_(no_head)


def test_per_suite_table():
    from vlaprune.evaluate.envs.libero import suite_table

    rates = {"libero_spatial/0": 1.0, "libero_spatial/1": 0.5, "libero_goal/2": 0.25, "libero_10/0": 0.0}
    assert suite_table(rates) == {"Spatial": 0.75, "Goal": 0.25, "Long": 0.0, "average": 1 / 3}
    assert suite_table({"libero_spatial/0": 1.0, "libero_spatial/1": 0.0}) == {}  # one suite: no table
