"""Plain OpenVLA (discretized action tokens, no OFT head) on the tiny mirror (`vlaprune.tiny.openvla`): the
folder loads as a token policy, its batches and loss are OpenVLA's (checked by hand), decoding maps tokens
to bins and un-normalized actions as its predict_action does, `score`, `prune-units` and closed-loop LIBERO
`eval` run on it, and a folder with neither head nor statistics is refused in one line."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlaprune.adapters import closed_loop_policy
from vlaprune.adapters.openvla import tokens
from vlaprune.adapters.openvla.closed_loop import center_crop, prompt_ids, resize, tower_pixels
from vlaprune.cli import main
from vlaprune.configs import DatasetConfig, PolicyConfig
from vlaprune.policy import load_policy

TASK0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory):
    from vlaprune.tiny.openvla import write_tiny_openvla

    return write_tiny_openvla(tmp_path_factory.mktemp("openvla") / "openvla")


@pytest.fixture(scope="module")
def ov_dataset(tmp_path_factory):
    """LIBERO-like frames: two cameras (plain OpenVLA reads the first), 8-D state, 7-D actions."""
    from vlaprune.tiny.dataset import write_libero_like_dataset

    return write_libero_like_dataset(tmp_path_factory.mktemp("ov-data") / "libero_spatial")


@pytest.fixture
def ov(ov_dir):
    return load_policy(PolicyConfig(path=str(ov_dir), trust_remote_code=True))


def _batches(handle, root, n=1, size=3):
    from vlaprune.data import Data

    return Data(handle, DatasetConfig(root=str(root))).batches(n, size, 0)


def test_folder_loads_as_a_token_policy(ov):
    policy, lay = ov.module, ov.layout()
    assert tokens.is_token_policy(policy) and policy.action_head is None
    assert policy.chunk == 1  # one action per step (OFT's chunk of 8 needs its head)
    assert set(lay.stacks) == {"language", "vision.dino", "vision.siglip"}
    assert lay.action_out == "vla.language_model.lm_head" and lay.training_forward is not None
    assert tokens.decode_vocab(policy.vla.config) == 320  # 384 - 64, the tokenizer's size
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    pix = torch.rand(1, 6, 32, 32)
    a = policy.vla(input_ids=ids, pixel_values=pix).logits
    b = policy.vla(input_ids=torch.tensor([[2, 10, 11, 12, 50]]), pixel_values=pix).logits
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])  # causal, as OpenVLA


def test_batch_and_loss_are_openvlas_by_hand(ov, ov_dataset):
    policy = ov.module
    (batch,) = _batches(ov, ov_dataset)
    stats = policy.vla.config.norm_stats["libero_spatial_no_noops"]["action"]
    assert batch["pixel_values"].shape[1] == 6  # one camera, two towers
    # labels: -100 but the 7 action tokens + </s>; token = 320 - digitize(normalized, linspace(-1, 1, 256))
    assert stats["mask"][-1] is False
    raw = batch["actions"][:, 0].numpy()  # normalized, the gripper as is (mask false)
    want = 320 - np.digitize(np.clip(raw, -1, 1), np.linspace(-1, 1, 256))
    for row, lab in zip(want, batch["labels"], strict=True):
        sup = lab[lab != -100].tolist()
        assert sup == [*row.tolist(), 3]  # action tokens, then </s>
    assert np.all((want >= 64) & (want <= 319))

    loss, metrics = tokens.token_loss(policy, batch)
    # reference 1: the remote code's own LM loss (OpenVLA's finetune.py takes output.loss)
    out = policy.vla(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        labels=batch["labels"],
    )
    assert torch.allclose(loss, out.loss, atol=1e-5)
    # reference 2: by hand, -log p(label) at the position before each supervised text token
    logp = out.logits.float().log_softmax(-1)
    patches = out.logits.shape[1] - batch["labels"].shape[1]
    terms = [
        -logp[b, patches + t - 1, batch["labels"][b, t]]
        for b in range(batch["labels"].shape[0])
        for t in range(1, batch["labels"].shape[1])
        if batch["labels"][b, t] != -100
    ]
    assert len(terms) == 8 * batch["labels"].shape[0]
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5) and metrics["ce"] > 0


def test_decoding_of_known_tokens_by_hand():
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    # token 319 = bin 1 -> center 0; 64 = bin 256 -> clipped to the last center; 200 = bin 120 -> center 119;
    # outside the action range: 5 (bin 315) -> the last center, 330 (bin -10) -> the first
    got = tokens.normalized_actions(np.array([319, 64, 200, 5, 330]), vocab_size=320)
    np.testing.assert_allclose(got, centers[[0, 254, 119, 254, 0]])
    assert got[0] == pytest.approx(-1 + 1 / 255)
    stats = {"q01": [-2.0, 0.0], "q99": [2.0, 4.0], "mask": [True, False]}
    np.testing.assert_allclose(tokens.unnormalize(np.array([0.5, 0.5]), stats), [1.0, 0.5])  # 0.5*1.5*4-2


def test_greedy_decoding_follows_the_logits_with_its_cache():
    """A fake VLA whose next token is fixed per step: the decoder reads argmax of the prefill's last logits,
    then feeds each token back with the cache for the next."""
    vocab, plan = 320, [300, 64, 5, 319, 100, 200, 250]

    def logits(tok):
        z = torch.zeros(1, 1, vocab + 64)
        z[0, 0, tok] = 1.0
        return z

    class LM(torch.nn.Module):
        def forward(self, input_ids, past_key_values, use_cache):
            step = past_key_values + 1
            assert input_ids.tolist() == [[plan[step - 1]]]  # the previous token comes back
            return SimpleNamespace(logits=logits(plan[step]), past_key_values=step)

    class VLA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.language_model = torch.nn.Parameter(torch.zeros(1)), LM()

        def forward(self, input_ids, attention_mask, pixel_values, use_cache):
            return SimpleNamespace(
                logits=torch.cat([torch.zeros(1, 3, vocab + 64), logits(plan[0])], 1), past_key_values=0
            )

    got = tokens.greedy_tokens(VLA(), torch.tensor([[2, 7, 8]]), torch.zeros(1, 6, 4, 4), 7)
    assert got.tolist() == [plan]


def test_cached_decoding_equals_the_mirrors_predict_action(ov):
    """vlaprune's cached greedy decoding + OpenVLA's un-normalization = the remote code's predict_action
    (uncached: one full forward per token) on the same prompt and pixels."""
    policy = ov.module
    cl = closed_loop_policy(policy, "libero", "libero_spatial/0")
    gen = torch.Generator().manual_seed(1)
    cam = (torch.randint(0, 256, (1, 3, 256, 256), generator=gen) / 255).float()
    batch = {"task": [TASK0], "observation.images.image": cam}
    towers = [(32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), (32, [0.5] * 3, [0.5] * 3)]
    frame = (cam[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    pixels = tower_pixels(center_crop(resize(frame)), towers)[None]
    ids = torch.tensor([prompt_ids(cl.tok, TASK0)])
    assert cl.tok.decode(ids[0]) == "<s>In: What action should the robot take to " + TASK0 + "?\nOut: "
    empty = cl.tok.convert_tokens_to_ids("Ġ")
    want = policy.vla.predict_action(ids[:, :-1], pixels, empty, "libero_spatial_no_noops")  # appends it
    want[-1] = -np.sign(2 * want[-1] - 1)  # normalize_gripper_action(binarize) + invert_gripper_action
    got = cl.select_action(batch)
    assert got.shape == (1, 7)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-6)
    assert cl.config.input_features.keys() == {"observation.images.image"}  # one camera, no state
    assert cl.env_defaults == {"max_steps": 220}


def test_score_and_prune_units_run_on_it(ov_dir, ov_dataset, tmp_path):
    from safetensors.torch import load_file, save_file

    policy = [f"--policy.path={ov_dir}", "--policy.trust_remote_code=true"]
    data = [f"--dataset.root={ov_dataset}", "--calibration.batches=1", "--calibration.batch_size=2"]
    assert main(["score", *policy, *data, "--method=gateprobe", f"--output={tmp_path / 's.json'}"]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())["results"]["gateprobe"]["scores"]
    assert all(v > 0 for v in scores["language"]) and len(scores["language"]) == 4

    weights = load_file(ov_dir / "model.safetensors")
    save_file(weights, tmp_path / "vlm.safetensors")  # the "base VLM": same names as the VLA
    moved = shutil.copytree(ov_dir, tmp_path / "moved")
    key = next(k for k in weights if k.endswith("layers.1.mlp.gate_proj.weight"))
    weights[key] = weights[key].clone()
    weights[key][:4] *= 3.0  # the "VLA" moved channels 0-3 of language block 1 the most
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    n = weights[key].shape[0] * 3  # blocks 1-3 ranked, block 0 protected
    out = tmp_path / "pruned"
    argv = [
        "prune-units", f"--policy.path={moved}", "--policy.trust_remote_code=true", *data,
        f"--base={tmp_path / 'vlm.safetensors'}", "--removal=real",
        f"--spec=language.mlp=dw_openvla:high:{4 / n}:global:protect=0",
        f"--output_dir={out}",
    ]  # fmt: skip
    assert main(argv) == 0
    plan = json.loads((out / "plan.json").read_text())["plans"][-1]
    assert list(plan["units"]["language"]) == ["1"]
    assert plan["units"]["language"]["1"]["ffn"] == list(range(4, weights[key].shape[0]))
    assert json.loads((out / "prune.json").read_text())["rows"][0]["loss"] > 0


def test_eval_runs_it_on_a_libero_episode(ov_dir, tmp_path):
    from vlaprune.evaluate.closed_loop import close_envs

    out = tmp_path / "eval.json"
    args = ["eval", f"--policy.path={ov_dir}", "--policy.trust_remote_code=true", "--env.type=libero"]
    args += ["--env.task=libero_spatial/0", "--env.max_steps=3", "--eval.n_episodes=1", f"--output={out}"]
    try:
        assert main(args) == 0
    finally:
        close_envs()
    task = json.loads(out.read_text())["closed_loop"]["normal"]["tasks"]["libero_spatial/0"]
    assert task["instruction"] == TASK0 and task["episodes"] == 1
    assert task["episodes_detail"][0]["steps"] <= 3


def test_a_folder_without_head_or_statistics_is_one_line(ov_dir, tmp_path, cli_error):
    bare = shutil.copytree(ov_dir, tmp_path / "bare")
    (bare / "dataset_statistics.json").unlink()
    cfg = json.loads((bare / "config.json").read_text())
    cfg.pop("norm_stats")
    (bare / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "never.json"
    line = cli_error(
        ["inspect", f"--policy.path={bare}", "--policy.trust_remote_code=true", f"--output={out}"]
    )
    assert "neither an OFT action head" in line and "dataset_statistics.json" in line
    assert not out.exists()
