"""Hidden-state digit path: the same numbers and gradients (to h and to the 10 digit rows of W only) as ntl_loss
and fused_logprob_entropy_ntl on the full ``h @ W.T`` logits."""

import os

import pytest
import torch

from ntl_kernels import METHODS, QWEN2_5_DIGIT_IDS, digit_targets, ntl_loss
from ntl_kernels.hidden_digits import digit_logits_from_hidden, digit_ntl_from_hidden
from ntl_kernels.logprob_entropy_ntl import fused_logprob_entropy_ntl

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs CUDA or TRITON_INTERPRET=1 to run the Triton kernels",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DIGIT_IDS = torch.tensor([40, 3, 17, 99, 64, 5, 88, 21, 70, 11], device=DEVICE)


def _case(n_rows, dim, vocab_size, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_rows, dim, generator=generator).to(DEVICE, dtype)
    weight = (torch.randn(vocab_size, dim, generator=generator) / dim**0.5).to(DEVICE, dtype)
    labels = torch.randint(0, vocab_size, (n_rows,), generator=generator).to(DEVICE)
    labels[::2] = DIGIT_IDS[torch.arange(n_rows, device=DEVICE)[::2] % 10]
    return hidden, weight, digit_targets(labels, DIGIT_IDS)


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("temperature", [1.0, "rows"])
def test_ntl_and_gradients_match_ntl_loss_on_full_logits(method, temperature):
    hidden, weight, targets = _case(12, 16, 101, torch.float32, seed=1)
    if temperature == "rows":
        temperature = torch.rand(12, device=DEVICE) + 0.5
    divisor = temperature.unsqueeze(-1) if isinstance(temperature, torch.Tensor) else temperature
    hidden.requires_grad_(), weight.requires_grad_()

    full = ntl_loss((hidden @ weight.T) / divisor, targets, DIGIT_IDS, method=method, reduction="none")
    out = digit_ntl_from_hidden(hidden, weight, DIGIT_IDS, temperature=temperature, ntl_targets=targets,
                                method=method)
    torch.testing.assert_close(out.ntl, full, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(12, device=DEVICE)
    expected = _grads((full * upstream).sum(), hidden, weight)
    got = _grads((out.ntl * upstream).sum(), hidden, weight)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    others = torch.ones(101, dtype=torch.bool, device=DEVICE)
    others[DIGIT_IDS] = False
    assert (got[1][others] == 0).all() and (got[1][DIGIT_IDS] != 0).any()


def test_digit_log_probs_match_the_fused_logits_op():
    hidden, weight, targets = _case(9, 24, 120, torch.float32, seed=2)
    labels = torch.zeros(9, dtype=torch.long, device=DEVICE)
    fused = fused_logprob_entropy_ntl(hidden @ weight.T, labels, DIGIT_IDS, temperature=0.6, ntl_targets=targets,
                                      method="was")
    out = digit_ntl_from_hidden(hidden, weight, DIGIT_IDS, temperature=0.6, ntl_targets=targets, method="was")
    torch.testing.assert_close(out.digit_log_probs, fused.digit_log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.ntl, fused.ntl, rtol=1e-5, atol=1e-5)


def test_bf16_mean_reduction_and_gradients():
    hidden, weight, targets = _case(16, 32, 128, torch.bfloat16, seed=3)
    hidden.requires_grad_(), weight.requires_grad_()
    # The full LM head in bf16 rounds the same digit products as the 10-row product.
    full = ntl_loss(hidden @ weight.T, targets, DIGIT_IDS, method="mse")
    ours = ntl_loss(digit_logits_from_hidden(hidden, weight, DIGIT_IDS), targets, torch.arange(10, device=DEVICE),
                    method="mse")
    torch.testing.assert_close(ours, full, rtol=1e-4, atol=1e-5)
    for g, e in zip(_grads(ours, hidden, weight), _grads(full, hidden, weight)):
        # bf16 products summed in another order: equal up to bf16 rounding of the largest entries
        torch.testing.assert_close(g.float(), e.float(), rtol=2**-7, atol=2**-6 * e.float().abs().max().item())


def test_leading_shape_without_targets():
    hidden, weight, _ = _case(6, 8, 110, torch.float32, seed=4)
    out = digit_ntl_from_hidden(hidden.reshape(2, 3, 8), weight, DIGIT_IDS, temperature=torch.ones(2, 1, device=DEVICE))
    assert out.ntl is None and out.digit_log_probs.shape == (2, 3, 10)
    expected = torch.log_softmax((hidden @ weight.T)[:, DIGIT_IDS], -1).reshape(2, 3, 10)
    torch.testing.assert_close(out.digit_log_probs, expected)


BAD = {
    "dim_mismatch": (lambda h, w: (h, w[:, :-1]), ValueError, "must match hidden"),
    "dtype_mismatch": (lambda h, w: (h, w.double()), ValueError, "must match hidden"),
    "weight_not_2d": (lambda h, w: (h, w[0]), ValueError, r"\[V, d\]"),
    "hidden_int": (lambda h, w: (h.long(), w), TypeError, "hidden must be a floating"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_are_named(case):
    make, error, message = BAD[case]
    hidden, weight, _ = _case(3, 8, 110, torch.float32, seed=5)
    with pytest.raises(error, match=message):
        digit_logits_from_hidden(*make(hidden, weight), DIGIT_IDS)
    with pytest.raises(ValueError, match="temperature"):
        digit_logits_from_hidden(hidden, weight, DIGIT_IDS, temperature=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Qwen2.5-0.5B sizes)")
def test_cuda_qwen_sizes():
    torch.manual_seed(0)
    n_rows, dim, vocab_size = 4096, 896, 151936
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS, device="cuda")
    hidden = torch.randn(n_rows, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab_size, dim, device="cuda") / dim**0.5).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 10, (n_rows,), device="cuda")
    full = ntl_loss(hidden @ weight.T, targets, digit_ids, method="nll")
    ours = digit_ntl_from_hidden(hidden, weight, digit_ids, ntl_targets=targets).ntl.mean()
    torch.testing.assert_close(ours, full, rtol=1e-4, atol=1e-4)
    for g, e in zip(_grads(ours, hidden, weight), _grads(full, hidden, weight)):
        torch.testing.assert_close(g.float(), e.float(), rtol=2**-7, atol=2**-6 * e.float().abs().max().item())
