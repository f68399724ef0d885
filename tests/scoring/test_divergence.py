"""dW diagnostics: zero against itself, perturbations found in exactly the right channels, bounded memory."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlaprune.cli import main
from vlaprune.errors import VlapruneError
from vlaprune.scoring.diverge import DivergeConfig, compare
from vlaprune.scoring.divergence import compare_tensor, module_type
from vlaprune.scoring.tensors import TensorSource

VLM_PREFIX = "model.vlm_with_expert.vlm."


@pytest.fixture
def vla_and_vlm(smolvla, tmp_path):
    """A SmolVLA checkpoint and its 'base VLM': the VLA's own VLM weights under SmolVLM2's names."""
    smolvla.save_pretrained(tmp_path / "vla")
    sd = load_file(tmp_path / "vla" / "model.safetensors")
    (tmp_path / "vlm").mkdir()
    save_file(
        {k[len(VLM_PREFIX) :]: v.clone() for k, v in sd.items() if k.startswith(VLM_PREFIX)},
        tmp_path / "vlm" / "model.safetensors",
    )
    return tmp_path / "vla", tmp_path / "vlm", sd


def test_checkpoint_against_itself_is_zero(vla_and_vlm, tmp_path):
    vla, vlm, sd = vla_and_vlm
    out = tmp_path / "out"
    assert main(["diverge", f"--base={vlm}", f"--tuned={vla}", f"--output_dir={out}"]) == 0
    report = json.loads((out / "summary.json").read_text())
    assert report["map"] == "smolvla" and report["matched"] == sum(k.startswith(VLM_PREFIX) for k in sd)
    assert all(v == 0 for v in report["module_types"].values())
    assert report["unmatched_base"] == [] and all(
        "lm_expert" in n or not n.startswith(VLM_PREFIX) for n in report["unmatched_tuned"]
    )
    import pyarrow.parquet as pq

    tensors = pq.read_table(out / "tensors.parquet").to_pylist()
    assert all(r["rel_fro"] == 0 and r["cosine"] == pytest.approx(1.0) for r in tensors)
    assert (out / "heatmap.png").stat().st_size > 1000


def test_known_perturbation_found_in_exactly_those_channels(vla_and_vlm, tmp_path):
    vla, vlm, sd = vla_and_vlm
    up = VLM_PREFIX + "model.text_model.layers.2.mlp.up_proj.weight"
    down = VLM_PREFIX + "model.text_model.layers.1.mlp.down_proj.weight"
    sd[up][[3, 7]] += 0.5
    sd[down][:, [5]] -= 0.3
    save_file(sd, vla / "model.safetensors")
    m = compare(DivergeConfig(base=str(vlm), tuned=str(vla), chunk_mb=1), progress=False)
    for name, (_, st) in m["stats"].items():
        moved = torch.nonzero(st.ch_diff).flatten().tolist() if st.ch_diff is not None else []
        if name == up[len(VLM_PREFIX) :]:  # output projection: channels are rows
            assert st.axis == "row" and moved == [3, 7] and st.rel > 0
        elif name == down[len(VLM_PREFIX) :]:  # input projection: channels are columns
            assert st.axis == "col" and moved == [5] and st.rel > 0
        else:
            assert st.diff_sq == 0 and moved == [], name


def test_chunked_stats_equal_whole_tensor_stats(tmp_path):
    torch.manual_seed(0)
    a, b = torch.randn(512, 384), torch.randn(512, 384)
    save_file({"w": a}, tmp_path / "a.safetensors")
    save_file({"w": b}, tmp_path / "b.safetensors")
    sa, sb = TensorSource(tmp_path / "a.safetensors"), TensorSource(tmp_path / "b.safetensors")
    limit = 64 * 1024  # 64 KiB chunks: the tensor (768 KiB) is read in 12 pieces
    d = (b - a).double()
    for axis, dim in (("row", 1), ("col", 0)):
        st = compare_tensor(sa, sb, "w", "w", limit, axis=axis)
        assert st.max_chunk_bytes <= limit
        assert st.rel == pytest.approx(float(d.norm() / a.double().norm()), rel=1e-5)
        assert st.cosine == pytest.approx(
            float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0)),
            abs=1e-5,
        )
        assert torch.allclose(st.ch_diff, d.square().sum(dim), rtol=1e-4)


def test_streaming_keeps_peak_memory_near_one_chunk(tmp_path):
    """Two 256 MB tensors compared with 8 MB chunks: the process grows by far less than one tensor."""
    code = f"""
import resource, torch
from safetensors.torch import save_file
for name, seed in (("a", 0), ("b", 1)):
    g = torch.Generator().manual_seed(seed)
    save_file({{"big": torch.randn(8192, 8192, generator=g)}}, "{tmp_path}/" + name + ".safetensors")
import gc; gc.collect()
from vlaprune.scoring.tensors import TensorSource
from vlaprune.scoring.divergence import compare_tensor
sa, sb = TensorSource("{tmp_path}/a.safetensors"), TensorSource("{tmp_path}/b.safetensors")
import psutil; p = psutil.Process(); before = p.memory_info().rss
peak = [before]
import threading
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], p.memory_info().rss); stop.wait(0.002)
t = threading.Thread(target=watch); t.start()
st = compare_tensor(sa, sb, "big", "big", 8 * 2**20)
stop.set(); t.join()
print((peak[0] - before) / 2**20, st.max_chunk_bytes / 2**20, st.rel)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    grew_mb, chunk_mb, rel = float(out[0]), float(out[1]), float(out[2])
    assert chunk_mb <= 8 and grew_mb < 96, (grew_mb, chunk_mb)  # one tensor is 256 MB
    assert rel == pytest.approx(2**0.5, rel=1e-2)  # two independent N(0,1) matrices


def test_module_types():
    assert module_type("model.text_model.layers.3.self_attn.q_proj.weight") == ("language", "attn_q", 3)
    assert module_type("model.vision_model.encoder.layers.1.mlp.fc2.weight") == ("vision", "mlp_down", 1)
    assert module_type("model.connector.modality_projection.proj.weight")[0] == "projector"
    assert module_type("language_model.model.layers.0.mlp.gate_proj.weight") == ("language", "mlp_gate", 0)


def test_bad_input(vla_and_vlm, tmp_path, cli_error):
    vla, vlm, _ = vla_and_vlm
    from vlaprune.tiny.hf import tiny_decoder_lm

    tiny_decoder_lm("llama").save_pretrained(tmp_path / "llama")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((vla / "model.safetensors").read_bytes()[:5000])
    out = tmp_path / "o"
    cases = [
        ([f"--base={tmp_path / 'llama'}", f"--tuned={vla}"], "different architectures"),
        ([f"--base={vlm}", f"--tuned={broken}"], "not a valid safetensors file"),
        ([f"--base={vlm}", f"--tuned={tmp_path / 'missing'}"], "no such checkpoint"),
        ([f"--base={vlm}", f"--tuned={vla}", "--map=nonsense"], "not VLA_PREFIX=>VLM_PREFIX"),
    ]
    for args, message in cases:
        assert message in cli_error(["diverge", *args, f"--output_dir={out}"]), args
        assert not out.exists()
    with pytest.raises(VlapruneError, match="not a valid safetensors"):
        TensorSource(broken)
