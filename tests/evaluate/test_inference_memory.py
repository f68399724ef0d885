"""Inference memory as the DTR paper reports it (the total one inference holds: weights + activations) beside
the growth of one call, on CPU (weights' bytes + peak RSS growth) and, where a GPU is present, CUDA's
allocator peak."""

import time

import pytest
import torch

from vlaprune.adapters import layout
from vlaprune.evaluate.cost import cost, inference_memory, weight_bytes


def test_weights_are_every_parameter_and_buffer_once():
    m = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.BatchNorm1d(20))
    m.append(m[0])  # shared: counted once
    want = (10 * 20 + 20) * 4 + (20 + 20) * 4 + (20 + 20) * 4 + 8  # linear; bn weight/bias; stats; count
    assert weight_bytes(m) == want
    assert weight_bytes(m.half()) == (10 * 20 + 20 + 20 + 20 + 20 + 20) * 2 + 8


def test_cpu_total_is_weights_plus_the_growth_of_one_call():
    model = torch.nn.Linear(256, 256)

    def call():  # holds 64 MB for a while, touched, so the resident set grows
        x = torch.ones(16 * 2**20)
        time.sleep(0.05)
        return x.sum()

    mem = inference_memory(call, model, torch.device("cpu"))
    assert mem["weights_bytes"] == (256 * 256 + 256) * 4
    assert mem["growth_bytes"] > 32 * 2**20
    assert mem["total_bytes"] == mem["weights_bytes"] + mem["growth_bytes"]
    assert mem["how"].startswith("CPU")


def test_cost_reports_it_beside_the_growth(llama):
    c = cost(layout(llama), n_calls=1, warmup=0)
    mem = c["inference_memory"]
    assert mem["weights_bytes"] == weight_bytes(llama) and mem["growth_bytes"] == c["peak_memory_bytes"]
    assert mem["total_bytes"] >= mem["weights_bytes"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_total_is_the_allocator_peak():
    model = torch.nn.Linear(1024, 1024).cuda()
    mem = inference_memory(lambda: torch.ones(2**26, device="cuda").sum(), model, torch.device("cuda"))
    assert mem["how"].startswith("CUDA")
    assert mem["total_bytes"] >= mem["weights_bytes"] + 2**28 and mem["growth_bytes"] >= 2**28
