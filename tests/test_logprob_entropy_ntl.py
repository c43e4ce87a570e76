"""fused_logprob_entropy_ntl: Triton kernels (interpreted on CPU) against the float64 reference and verl's own
log-prob/entropy functions; gradients of every output alone and combined; strides, masked vocabulary, huge rows,
in-place backward, argument checks. CUDA tests at Qwen2.5 sizes run when a GPU is present."""

import os

import pytest
import torch

from ntl_kernels import QWEN2_5_DIGIT_IDS, METHODS, digit_targets
from ntl_kernels import logprob_entropy_ntl as module
from ntl_kernels.logprob_entropy_ntl import fused_logprob_entropy_ntl, logprob_entropy_ntl_reference

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs CUDA or TRITON_INTERPRET=1 to run the Triton kernels",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUTPUTS = ("log_probs", "entropy", "digit_log_probs", "ntl")
# Digit ids spread over the vocabulary so that, with small blocks, several backward blocks own digit columns.
SCATTERED_DIGIT_IDS = torch.tensor([3, 290, 17, 100, 64, 65, 200, 5, 128, 255])


@pytest.fixture
def small_blocks(monkeypatch):
    """64-wide vocabulary blocks: rows of a few hundred entries take the online multi-block paths."""
    monkeypatch.setattr(module, "FORWARD_BLOCK_VOCAB", 64)
    monkeypatch.setattr(module, "BACKWARD_BLOCK_VOCAB", 64)


def _case(shape, vocab_size, digit_ids, seed, scale=3.0):
    """Logits [*shape, V], labels with about half digits and a few ignored, their digit targets."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab_size, generator=generator) * scale
    labels = torch.randint(0, vocab_size, shape, generator=generator)
    digit_labels = digit_ids[torch.randint(0, 10, shape, generator=generator)]
    labels = torch.where(torch.rand(shape, generator=generator) < 0.5, digit_labels, labels)
    labels[torch.rand(shape, generator=generator) < 0.15] = -100
    return logits, labels, digit_targets(labels, digit_ids)


def _temperature(kind, shape, seed=0):
    if kind == "one":
        return 1.0
    if kind == "scalar":
        return 0.7
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.4  # one per row


def _weights(shape, grad_of, seed=1):
    """Random upstream gradients for the outputs named in ``grad_of`` (None for the others)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {"log_probs": shape, "entropy": shape, "digit_log_probs": (*shape, 10), "ntl": shape}
    return {name: torch.randn(sizes[name], generator=generator) if name in grad_of else None for name in OUTPUTS}


def _run(fn, logits, labels, digit_ids, temperature, targets, method, weights, **kwargs):
    """Outputs of ``fn`` and the gradient of sum(weight * output) w.r.t. ``logits`` (a leaf copy)."""
    logits = logits.detach().clone().requires_grad_()
    out = fn(logits, labels, digit_ids, temperature=temperature, ntl_targets=targets, method=method, **kwargs)
    objective = sum((getattr(out, name) * w.to(out.log_probs)).sum() for name, w in weights.items() if w is not None)
    objective.backward()
    return out, logits.grad


def _reference(logits, labels, digit_ids, *, temperature, ntl_targets, method, **_):
    return logprob_entropy_ntl_reference(logits, labels, digit_ids, temperature, ntl_targets, method)


def _check_against_float64(logits, labels, digit_ids, temperature, targets, method, weights, grad_rtol, **kwargs):
    """The kernels on ``logits`` (on DEVICE) vs the float64 reference on the same (already rounded) values."""
    on_device = lambda t: t.to(DEVICE) if isinstance(t, torch.Tensor) else t  # noqa: E731
    out, grad = _run(
        fused_logprob_entropy_ntl, on_device(logits), on_device(labels), on_device(digit_ids),
        on_device(temperature), on_device(targets), method, weights, **kwargs,
    )
    temperature64 = temperature.double() if isinstance(temperature, torch.Tensor) else temperature
    ref, ref_grad = _run(_reference, logits.double(), labels, digit_ids, temperature64, targets, method, weights)
    for name in OUTPUTS:
        if getattr(ref, name) is not None:
            torch.testing.assert_close(getattr(out, name).cpu().double(), getattr(ref, name), rtol=1e-5, atol=2e-5)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=grad_rtol, atol=1e-6)
    return out, grad


GRAD_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2**-7}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", ["one", "scalar", "rows"])
@pytest.mark.parametrize("vocab_size", [37, 300])
def test_all_outputs_and_combined_gradient_match_float64(dtype, temperature, vocab_size, small_blocks):
    digit_ids = torch.arange(15, 25) if vocab_size == 37 else SCATTERED_DIGIT_IDS
    logits, labels, targets = _case((3, 4), vocab_size, digit_ids, seed=vocab_size)
    _check_against_float64(
        logits.to(dtype), labels, digit_ids, _temperature(temperature, (3, 4)), targets, "nll",
        _weights((3, 4), OUTPUTS), GRAD_RTOL[dtype],
    )


@pytest.mark.parametrize(
    "grad_of",
    [("log_probs",), ("entropy",), ("digit_log_probs",), ("ntl",), ("log_probs", "entropy"), ("log_probs", "ntl")],
)
def test_gradient_of_each_output_alone_and_in_pairs(grad_of, small_blocks):
    logits, labels, targets = _case((10,), 300, SCATTERED_DIGIT_IDS, seed=7)
    _check_against_float64(
        logits, labels, SCATTERED_DIGIT_IDS, 0.8, targets, "nll", _weights((10,), grad_of), GRAD_RTOL[torch.float32]
    )


@pytest.mark.parametrize("method", METHODS)
def test_ntl_methods_match_ntl_loss_per_position(method):
    logits, labels, targets = _case((2, 5), 41, torch.arange(15, 25), seed=11)
    _check_against_float64(
        logits, labels, torch.arange(15, 25), _temperature("rows", (2, 5)), targets, method,
        _weights((2, 5), ("ntl",)), GRAD_RTOL[torch.float32],
    )


def test_confidence_is_minus_log_floored_probability():
    digit_ids = torch.arange(10)
    logits = torch.zeros(2, 12)
    logits[:, 0] = 40.0  # digit 0 takes all the mass: p(digit 3) = e^-40 < 1e-8
    out = fused_logprob_entropy_ntl(
        logits.to(DEVICE), torch.tensor([3, 0]).to(DEVICE), digit_ids.to(DEVICE),
        ntl_targets=torch.tensor([3, 0]).to(DEVICE), method="confidence",
    )
    torch.testing.assert_close(out.ntl.cpu(), torch.tensor([-torch.log(torch.tensor(1e-8)).item(), 0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", ["one", "scalar", "rows"])
def test_matches_verl_logprobs_and_entropy(dtype, temperature):
    """verl's engine divides the logits by the temperature, then calls these two functions."""
    verl_functions = pytest.importorskip("verl.utils.torch_functional")  # not on the GPU check machine
    entropy_from_logits, logprobs_from_logits = verl_functions.entropy_from_logits, verl_functions.logprobs_from_logits

    logits, labels, _ = _case((6,), 300, SCATTERED_DIGIT_IDS, seed=3)
    labels = labels.clamp(min=0)  # verl has no ignored labels
    logits = logits.to(dtype)
    temp = _temperature(temperature, (6,))
    out = fused_logprob_entropy_ntl(
        logits.to(DEVICE), labels.to(DEVICE), SCATTERED_DIGIT_IDS.to(DEVICE),
        temperature=temp.to(DEVICE) if isinstance(temp, torch.Tensor) else temp,
    )
    log_probs, entropy = out.log_probs.cpu(), out.entropy.cpu()
    row_temp = torch.as_tensor(temp).reshape(-1, 1)
    # We divide in float32: verl's functions on the float32 tempered logits are the same numbers.
    tempered = logits.float() / row_temp
    torch.testing.assert_close(log_probs, logprobs_from_logits(tempered, labels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, entropy_from_logits(tempered), rtol=1e-5, atol=1e-5)
    if dtype == torch.bfloat16:
        # verl's engine on bf16 rounds the temperature and logits / temperature to bf16 and takes the entropy's
        # softmax in bf16: our error against the exact value is no larger than that path's.
        verl_tempered = logits if temperature == "one" else logits / row_temp.to(dtype)
        exact = logprob_entropy_ntl_reference(logits.double(), labels, SCATTERED_DIGIT_IDS, row_temp.double()[:, 0])
        for ours, verl, truth in (
            (log_probs, logprobs_from_logits(verl_tempered, labels), exact.log_probs),
            (entropy, entropy_from_logits(verl_tempered), exact.entropy),
        ):
            assert (ours.double() - truth).abs().max() <= (verl.double() - truth).abs().max() + 1e-6


STRIDED = {
    "every_other_position": lambda: torch.randn(2, 8, 45)[:, ::2],
    "sliced_vocab": lambda: torch.randn(2, 4, 64)[..., 5:50],
    "every_other_vocab_entry": lambda: torch.randn(6, 90)[:, ::2],
    "transposed_rows": lambda: torch.randn(4, 3, 45).transpose(0, 1),
    "unmergeable_strides": lambda: torch.randn(2, 3, 4, 45).permute(2, 0, 1, 3),
}


@pytest.mark.parametrize("layout", STRIDED)
@pytest.mark.parametrize("inplace", [False, True])
def test_strided_inputs(layout, inplace):
    torch.manual_seed(5)
    logits = STRIDED[layout]()
    digit_ids = torch.arange(15, 25)
    _, labels, targets = _case(logits.shape[:-1], logits.shape[-1], digit_ids, seed=2)
    _check_against_float64(
        logits, labels, digit_ids, 0.9, targets, "was", _weights(labels.shape, OUTPUTS), GRAD_RTOL[torch.float32],
        inplace_backward=inplace,
    )


def test_ignored_labels_and_non_digit_targets_contribute_nothing():
    logits, labels, targets = _case((12,), 37, torch.arange(15, 25), seed=9)
    labels[:3] = -100
    targets = digit_targets(labels, torch.arange(15, 25))
    out, grad = _run(
        fused_logprob_entropy_ntl, logits.to(DEVICE), labels.to(DEVICE), torch.arange(15, 25).to(DEVICE), 1.0,
        targets.to(DEVICE), "nll", _weights((12,), ("log_probs", "ntl")),
    )
    assert (out.log_probs.cpu()[:3] == 0).all() and (out.ntl.cpu()[targets == -100] == 0).all()
    assert (grad.cpu()[(labels == -100)] == 0).all()  # neither a log-prob nor an NTL term on those rows
    assert (out.ntl.cpu()[targets != -100] > 0).all()


def test_masked_vocabulary_neg_inf(small_blocks):
    logits, labels, targets = _case((8,), 300, SCATTERED_DIGIT_IDS, seed=4)
    labels = labels.clamp(min=0)
    keep = torch.zeros(8, 300, dtype=torch.bool)
    keep.scatter_(1, labels.unsqueeze(1), True)
    keep[:, SCATTERED_DIGIT_IDS[targets.clamp(min=0)]] = True  # the target digit of every row stays finite
    masked = (torch.rand(8, 300) < 0.6) & ~keep
    masked[0, :128] = ~keep[0, :128]  # row 0: whole first blocks are -inf apart from kept entries
    logits[masked] = float("-inf")
    out, grad = _check_against_float64(
        logits, labels, SCATTERED_DIGIT_IDS, 1.3, targets, "mse", _weights((8,), OUTPUTS), GRAD_RTOL[torch.float32]
    )
    assert torch.isfinite(out.entropy).all() and torch.isfinite(grad).all()
    masked[:, SCATTERED_DIGIT_IDS] = False  # d log_softmax(z)_k / dz_k = 1 - p_k stays 1 at z_k = -inf
    assert (grad.cpu()[masked] == 0).all()


def test_rows_of_huge_magnitude(small_blocks):
    """Entropy from sums relative to the row max: an offset of 1e4 must not cancel away the precision."""
    logits, labels, targets = _case((6,), 300, SCATTERED_DIGIT_IDS, seed=8, scale=20.0)
    logits = logits + torch.tensor([1e4, -1e4, 3e4, 0.0, 5e3, -3e4]).unsqueeze(1)
    _check_against_float64(
        logits, labels, SCATTERED_DIGIT_IDS, 1.0, targets, "nll", _weights((6,), OUTPUTS), GRAD_RTOL[torch.float32]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_writes_the_gradient_into_the_logits(dtype, small_blocks):
    logits, labels, targets = _case((5,), 300, SCATTERED_DIGIT_IDS, seed=6)
    weights = _weights((5,), OUTPUTS)
    _, expected = _run(
        fused_logprob_entropy_ntl, logits.to(DEVICE, dtype), labels.to(DEVICE), SCATTERED_DIGIT_IDS.to(DEVICE),
        0.7, targets.to(DEVICE), "was", weights,
    )
    leaf = logits.to(DEVICE, dtype).requires_grad_()
    tempered_copy = leaf * 1.0  # a non-leaf buffer nothing else needs, like verl's logits / temperature
    out = fused_logprob_entropy_ntl(
        tempered_copy, labels.to(DEVICE), SCATTERED_DIGIT_IDS.to(DEVICE), temperature=0.7,
        ntl_targets=targets.to(DEVICE), method="was", inplace_backward=True,
    )
    sum((getattr(out, n) * w.to(DEVICE)).sum() for n, w in weights.items()).backward()
    torch.testing.assert_close(leaf.grad, expected, rtol=0, atol=0)
    torch.testing.assert_close(tempered_copy.detach(), expected, rtol=0, atol=0)  # the buffer now holds it


def _inplace_outputs(logits, labels, targets):
    return fused_logprob_entropy_ntl(logits, labels.to(DEVICE), SCATTERED_DIGIT_IDS.to(DEVICE), temperature=0.7,
                                     ntl_targets=targets.to(DEVICE), method="nll", inplace_backward=True)


def test_inplace_backward_refuses_a_second_backward():
    """The first backward overwrites the saved logits: a second one (retain_graph) must fail, not compute with them."""
    logits, labels, targets = _case((5,), 300, SCATTERED_DIGIT_IDS, seed=6)
    tempered_copy = logits.to(DEVICE).requires_grad_() * 1.0
    loss = _inplace_outputs(tempered_copy, labels, targets).entropy.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_backward_refuses_a_later_reader_of_the_logits():
    """Another op that saved the logits and whose backward runs after ours (it was recorded first) would read the
    gradient as if it were the logits: autograd's version check stops it."""
    logits, labels, targets = _case((5,), 300, SCATTERED_DIGIT_IDS, seed=6)
    tempered_copy = logits.to(DEVICE).requires_grad_() * 1.0
    squares = (tempered_copy**2).sum()  # saves the logits for its backward
    out = _inplace_outputs(tempered_copy, labels, targets)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (out.log_probs.sum() + squares).backward()


@pytest.mark.parametrize("shape", [(3, 1, 300), (1, 300)])
def test_inplace_backward_refuses_overlapping_logits(shape):
    logits = torch.randn(shape).to(DEVICE).expand(*shape[:-2], 4, 300)  # stride 0 along the rows
    labels = torch.zeros(logits.shape[:-1], dtype=torch.long).to(DEVICE)
    with pytest.raises(ValueError, match="inplace_backward.*overlap"):
        fused_logprob_entropy_ntl(logits, labels, SCATTERED_DIGIT_IDS.to(DEVICE), inplace_backward=True)
    fused_logprob_entropy_ntl(logits, labels, SCATTERED_DIGIT_IDS.to(DEVICE))  # without it: fine


def test_without_ntl_targets_and_leading_shapes():
    logits, labels, _ = _case((2, 3, 2), 37, torch.arange(15, 25), seed=12)
    out, grad = _check_against_float64(
        logits, labels, torch.arange(15, 25), 1.0, None, "nll", _weights((2, 3, 2), ("log_probs", "digit_log_probs")),
        GRAD_RTOL[torch.float32],
    )
    assert out.ntl is None and out.digit_log_probs.shape == (2, 3, 2, 10)
    empty = fused_logprob_entropy_ntl(torch.randn(0, 37).to(DEVICE), torch.zeros(0, dtype=torch.long).to(DEVICE),
                                      torch.arange(15, 25).to(DEVICE))
    assert empty.log_probs.shape == (0,) and empty.digit_log_probs.shape == (0, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the pure-torch path is what CPU runs without the interpreter")
def test_cpu_reference_path_agrees_with_the_kernels(monkeypatch):
    logits, labels, targets = _case((7,), 37, torch.arange(15, 25), seed=13)
    args = (logits, labels, torch.arange(15, 25), torch.rand(7) + 0.5, targets, "confidence", _weights((7,), OUTPUTS))
    kernel_out, kernel_grad = _run(fused_logprob_entropy_ntl, *args)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch_out, torch_grad = _run(fused_logprob_entropy_ntl, *args)
    for name in OUTPUTS:
        torch.testing.assert_close(getattr(kernel_out, name), getattr(torch_out, name), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernel_grad, torch_grad, rtol=1e-4, atol=1e-6)


BAD_ARGUMENTS = {
    "labels_out_of_vocab": (dict(labels=torch.tensor([0, 37])), ValueError, "labels must be token ids"),
    "labels_float": (dict(labels=torch.zeros(2)), TypeError, "labels must be an integer"),
    "labels_shape": (dict(labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels shape"),
    "temperature_zero": (dict(temperature=0.0), ValueError, "temperature must be positive"),
    "temperature_shape": (dict(temperature=torch.ones(3)), ValueError, "temperature shape"),
    "temperature_int_tensor": (dict(temperature=torch.ones(2, dtype=torch.long)), TypeError, "temperature"),
    "targets_not_digits": (dict(ntl_targets=torch.tensor([0, 12])), ValueError, "targets must be digit values"),
    "method": (dict(method="l1"), ValueError, "method must be one of"),
    "digit_ids": (dict(digit_ids=torch.arange(10).reshape(2, 5)), ValueError, "digit_ids must be a vector"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_are_named(case):
    overrides, error, message = BAD_ARGUMENTS[case]
    kwargs = dict(labels=torch.tensor([0, 5]), digit_ids=torch.arange(15, 25)) | overrides
    labels, digit_ids = kwargs.pop("labels"), kwargs.pop("digit_ids")
    with pytest.raises(error, match=message):
        fused_logprob_entropy_ntl(torch.randn(2, 37), labels, digit_ids, **kwargs)


# ---- CUDA, at Qwen2.5 sizes ----

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Qwen2.5-size rows)")


def _chunked_reference(logits, labels, digit_ids, temperature, targets, method, weights, chunk=512):
    """float32 reference outputs and gradient, a chunk of rows at a time to bound the autograd memory."""
    outputs, grads = [], []
    for start in range(0, logits.shape[0], chunk):
        rows = slice(start, start + chunk)
        part = logits[rows].detach().float().requires_grad_()
        temp = temperature[rows] if isinstance(temperature, torch.Tensor) else temperature
        out = logprob_entropy_ntl_reference(part, labels[rows], digit_ids, temp, targets[rows], method)
        sum((getattr(out, n) * w[rows]).sum() for n, w in weights.items()).backward()
        outputs.append([t.detach() for t in out])
        grads.append(part.grad)
    return [torch.cat(parts) for parts in zip(*outputs)], torch.cat(grads)


@requires_cuda
@pytest.mark.parametrize("method", ["nll", "was"])
def test_cuda_qwen_sizes_against_float32(method):
    torch.manual_seed(0)
    n_rows, vocab_size = 4096, 151936
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS, device="cuda")
    logits = (torch.randn(n_rows, vocab_size, device="cuda") * 2).to(torch.bfloat16)
    labels = torch.randint(0, vocab_size, (n_rows,), device="cuda")
    labels[::3] = digit_ids[torch.randint(0, 10, (len(labels[::3]),), device="cuda")]
    targets = digit_targets(labels, digit_ids)
    temperature = torch.rand(n_rows, device="cuda") + 0.5
    weights = {n: w.cuda() for n, w in _weights((n_rows,), OUTPUTS).items()}
    leaf = logits.clone().requires_grad_()
    out = fused_logprob_entropy_ntl(leaf, labels, digit_ids, temperature=temperature, ntl_targets=targets,
                                    method=method)
    sum((getattr(out, n) * w).sum() for n, w in weights.items()).backward()
    ref, ref_grad = _chunked_reference(logits, labels, digit_ids, temperature, targets, method, weights)
    for name, expected in zip(OUTPUTS, ref):
        torch.testing.assert_close(getattr(out, name), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(leaf.grad.float(), ref_grad, rtol=2**-7, atol=1e-7)

    tempered = logits.clone().requires_grad_()  # the in-place backward gives the same gradient, in the buffer
    out = fused_logprob_entropy_ntl(tempered * 1.0, labels, digit_ids, temperature=temperature,
                                    ntl_targets=targets, method=method, inplace_backward=True)
    sum((getattr(out, n) * w).sum() for n, w in weights.items()).backward()
    torch.testing.assert_close(tempered.grad, leaf.grad, rtol=0, atol=0)


def test_benchmark_smoke_runs(tmp_path):
    """bench/bench_actor.py at tiny sizes: every measurement's code path runs and the report is written."""
    from bench.bench_actor import main

    report = main(["--smoke", "--out", str(tmp_path)])
    assert report["results"]["ours_fwd_bwd_ms"] > 0 and report["results"]["hidden_digits_fwd_bwd_ms"] > 0
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md", ".png"]
