"""pytest-benchmark view of the same comparison (CPU: reference path; CUDA: Triton):

    pytest bench/test_bench_ntl_loss.py --benchmark-json OUT.json

16 x 2048 rows at V = 151,936 bf16 on CUDA; 2 x 512 rows on CPU.
"""

import pytest
import torch

from bench.bench_ntl_loss import ours, torch_formulation
from ntl_kernels import QWEN2_5_DIGIT_IDS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS = 16 * 2048 if DEVICE == "cuda" else 2 * 512
VOCAB = 151_936


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    logits = (torch.randn(ROWS, VOCAB, device=DEVICE) * 2).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 10, (ROWS,), device=DEVICE)
    targets[torch.rand(ROWS, device=DEVICE) < 0.5] = -100
    return logits, targets, torch.tensor(QWEN2_5_DIGIT_IDS, device=DEVICE)


@pytest.mark.parametrize("impl", [ours, torch_formulation], ids=["ours", "torch"])
def test_forward(benchmark, inputs, impl):
    def run():
        with torch.no_grad():
            impl(*inputs)
        _sync()

    benchmark.pedantic(run, warmup_rounds=3, rounds=20)


@pytest.mark.parametrize("impl", [ours, torch_formulation], ids=["ours", "torch"])
def test_forward_backward(benchmark, inputs, impl):
    logits = inputs[0]

    def run():
        logits.grad = None
        impl(*inputs).backward()
        _sync()

    benchmark.pedantic(run, warmup_rounds=2, rounds=10)
