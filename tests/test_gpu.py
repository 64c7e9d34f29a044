"""On a CUDA machine (`python -m pytest -m gpu`): the metric kernels give on the GPU what they give on the CPU.
Skipped without a CUDA device; benchmarks/gpu_check.py is the longer prepared check of a GPU machine."""

from __future__ import annotations

import pytest
import torch

from prh_bench.align import prepare, score_layers

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(("metric", "params"), [("mutual_knn", {"k": 10}), ("cka", {}), ("cknna", {"k": 10})])
def test_kernels_on_the_gpu_match_the_cpu(metric: str, params: dict) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 300, 64, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(64, 48, generator=g, dtype=torch.float64)) + 0.5 * torch.randn(
        3, 300, 48, generator=g, dtype=torch.float64
    )
    cpu = score_layers(metric, prepare(x), prepare(y), **params).matrix
    gpu = score_layers(metric, prepare(x.cuda()), prepare(y.cuda()), **params).matrix
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-9)
