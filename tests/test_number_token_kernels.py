"""Number-token sets beyond the 10 digits (issue 17): every op on Llama-3's '0'..'999' set (K = 1,110, values
int(text)) against the float64 reference and the paper authors' ``ntloss`` (``digit_level=False``,
``reweigh=False``), values and gradients, on the reference path and the Triton kernels (interpreted on CPU); the
options ``number_values``, ``squash_factor`` and ``weights``; sets of other sizes; the argument checks."""

import os

import pytest
import torch

from ntl_kernels import (
    REDUCTIONS,
    digit_ntl_from_hidden,
    fused_logprob_entropy_ntl,
    logprob_entropy_ntl_reference,
    ntl_loss,
    ntl_loss_reference,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs CUDA or TRITON_INTERPRET=1 to run the Triton kernels",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LLAMA3_TEXTS = tuple(str(i) for i in range(10)) + tuple(f"{i:02d}" for i in range(100)) + tuple(
    f"{i:03d}" for i in range(1000)
)  # '7', '07' and '007': three tokens of value 7
VOCAB_SIZE = 1_300


def _number_set(texts=LLAMA3_TEXTS, vocab_size=VOCAB_SIZE, seed=0):
    """(ids [K] scattered over a fake vocabulary, values [K] float32 = int(text))."""
    ids = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))[: len(texts)]
    return ids.to(DEVICE), torch.tensor([float(int(text)) for text in texts], device=DEVICE)


def _case(shape, ids, seed, vocab_size=VOCAB_SIZE):
    """Logits [*shape, V] (the number-token columns given a spread of magnitudes), label token ids (mostly number
    tokens, some other tokens, one ignored), their slot targets and positive weights with one 0."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab_size, generator=generator) * 3
    slots = torch.randint(0, len(ids), shape, generator=generator)
    labels = torch.where(torch.rand(shape, generator=generator) < 0.75, ids.cpu()[slots], torch.randint(
        0, vocab_size, shape, generator=generator))
    labels.view(-1)[0] = -100
    slot_of = torch.full((vocab_size,), -100)
    slot_of[ids.cpu()] = torch.arange(len(ids))
    targets = torch.where(labels >= 0, slot_of[labels.clamp(min=0)], -100)
    weights = torch.rand(shape, generator=generator) + 0.1
    weights.view(-1)[-1] = 0.0
    return logits.to(DEVICE), labels.to(DEVICE), targets.to(DEVICE), weights.to(DEVICE)


def _value_and_grad(op, logits, upstream_seed=3):
    """``op(logits)`` and the gradient of sum(u * op) w.r.t. ``logits`` for a fixed random u."""
    logits = logits.detach().clone().requires_grad_()
    out = op(logits)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed)).to(out)
    (grad,) = torch.autograd.grad((out * upstream).sum(), logits)
    return out.detach(), grad


def _close(got, expected, rtol=2e-5):
    """float32 kernels against float64: relative to the largest magnitude (mse reaches 1e5 on values to 999)."""
    scale = expected.abs().max().clamp(min=1.0)
    torch.testing.assert_close(got.double(), expected.double(), rtol=0, atol=rtol * float(scale))


class FakeTokenizer:
    """The two things ``ntloss`` reads of a tokenizer with ``digit_level=False``: its vocabulary and size."""

    def __init__(self, ids, texts, vocab_size):
        self.vocab = {f"tok{i}": i for i in range(vocab_size)}
        for token_id, text in zip(ids.tolist(), texts):
            del self.vocab[f"tok{token_id}"]
            self.vocab[text] = token_id

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


# Each options set names (number_values?, squash_factor, weights?); ntloss's class and keyword for each method.
OPTIONS = {"values": (True, None, False), "values_squash_weights": (True, 30.0, True)}
NTLOSS = {"was": "NTLoss", "mse": "NTLossDotProduct"}


def _options(name, values, weights):
    with_values, squash_factor, with_weights = OPTIONS[name]
    return dict(number_values=values if with_values else None, squash_factor=squash_factor,
                weights=weights if with_weights else None)


@pytest.mark.parametrize("path", ["reference", "kernels"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("method", sorted(NTLOSS))
def test_llama3_set_matches_ntloss(method, options, reduction, path, monkeypatch):
    ntloss = pytest.importorskip("ntloss")
    if path == "reference":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    ids, values = _number_set()
    logits, labels, targets, weights = _case((2, 3), ids, seed=1)
    kwargs = _options(options, values, weights)
    if method == "mse" and kwargs["squash_factor"] is not None:
        kwargs["squash_factor"] = None  # mse is not squashed; ntloss's dot-product loss has no such option
    constructor = getattr(ntloss, NTLOSS[method])
    extra = {"squash_factor": kwargs["squash_factor"]} if method == "was" else {}
    theirs_loss = constructor(FakeTokenizer(ids.cpu(), LLAMA3_TEXTS, VOCAB_SIZE), vocab_size=VOCAB_SIZE,
                              digit_level=False, reweigh=False, **extra)
    dtype = torch.float64 if path == "reference" else torch.float32
    ours = _value_and_grad(lambda x: ntl_loss(x, targets, ids, method=method, reduction=reduction, **kwargs),
                           logits.to(dtype))
    theirs = _value_and_grad(lambda x: theirs_loss(x, labels, loss_weights=kwargs["weights"], reduction=reduction),
                             logits.double())
    for got, expected in zip(ours, theirs):
        _close(got, expected, rtol=1e-6 if path == "reference" else 2e-5)


def _flat(outputs):
    """The outputs of an op as one vector (one backward for all of them)."""
    return torch.cat([output.reshape(-1) for output in outputs if output is not None])


@pytest.mark.parametrize(
    "method,options",
    [("nll", "values_squash_weights"), ("confidence", "values_squash_weights"), ("was", "values"),
     ("was", "values_squash_weights"), ("mse", "values"), ("mse", "values_squash_weights")],
)
def test_llama3_set_kernels_match_float64_reference_every_op(method, options):
    """ntl_loss (each reduction), the fused single pass (all outputs at once) and the hidden-state path, values and
    gradients, on the interpreted kernels against the float64 reference. (Values matter to was/mse only.)"""
    ids, values = _number_set()
    logits, labels, targets, weights = _case((2, 3), ids, seed=2)
    kwargs = _options(options, values, weights)
    for reduction in REDUCTIONS:
        got = _value_and_grad(lambda x: ntl_loss(x, targets, ids, method=method, reduction=reduction, **kwargs),
                              logits)
        expected = _value_and_grad(
            lambda x: ntl_loss_reference(x, targets, ids, method, reduction, **kwargs)[0], logits.double()
        )
        for g, e in zip(got, expected):
            _close(g, e)
    got = _value_and_grad(lambda x: _flat(fused_logprob_entropy_ntl(
        x, labels, ids, temperature=0.8, ntl_targets=targets, method=method, **kwargs)), logits)
    expected = _value_and_grad(lambda x: _flat(logprob_entropy_ntl_reference(
        x, labels, ids, 0.8, targets, method, **kwargs)), logits.double())
    for g, e in zip(got, expected):
        _close(g, e)
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 3, 8, generator=generator).to(DEVICE)
    weight = torch.randn(VOCAB_SIZE, 8, generator=generator).to(DEVICE)
    got = _value_and_grad(lambda h: digit_ntl_from_hidden(h, weight, ids, ntl_targets=targets, method=method,
                                                          temperature=0.8, **kwargs).ntl, hidden)
    expected = _value_and_grad(lambda h: ntl_loss_reference(
        h @ weight.double().T / 0.8, targets, ids, method, "none", **kwargs)[0], hidden.double())
    for g, e in zip(got, expected):
        _close(g, e)


SETS = {
    "one_token": ("5",),
    "sixteen_tokens": tuple(str(i) for i in range(10)) + ("10", "11", "12", "20", "50", "99"),
    "seventeen_with_repeats": tuple(str(i) for i in range(10)) + ("00", "01", "07", "007", "10", "100", "999"),
}


@pytest.mark.parametrize("texts", sorted(SETS))
def test_other_set_sizes_match_float64_reference(texts):
    """K at the lane-block edges (1; 16 = a full block; 17 = the next block), values with repeats, the multi-block
    group reduction, the fused backward's label lane."""
    texts = SETS[texts]
    ids, values = _number_set(texts, vocab_size=40, seed=5)
    logits, labels, targets, weights = _case((3, 5), ids, seed=6, vocab_size=40)
    kwargs = dict(number_values=values, squash_factor=4.0 if len(texts) > 1 else None, weights=weights)
    for method in ("confidence", "was"):
        got = _value_and_grad(lambda x: ntl_loss(x, targets, ids, method=method, reduction="sample", **kwargs),
                              logits)
        expected = _value_and_grad(
            lambda x: ntl_loss_reference(x, targets, ids, method, "sample", **kwargs)[0], logits.double())
        for g, e in zip(got, expected):
            _close(g, e)
    got = _value_and_grad(lambda x: _flat(fused_logprob_entropy_ntl(
        x, labels, ids, ntl_targets=targets, method="mse", **kwargs)), logits)
    expected = _value_and_grad(lambda x: _flat(logprob_entropy_ntl_reference(
        x, labels, ids, 1.0, targets, "mse", **kwargs)), logits.double())
    for g, e in zip(got, expected):
        _close(g, e)


@pytest.mark.parametrize("path", ["reference", "kernels"])
def test_digit_values_and_unit_weights_give_the_defaults(path, monkeypatch):
    """number_values = 0..9 and weights of 1 are the defaults, exactly (the K = 10 code path is unchanged)."""
    if path == "reference":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    ids = torch.randperm(30, generator=torch.Generator().manual_seed(7))[:10].to(DEVICE)
    logits, labels, targets, _ = _case((3, 4), ids, seed=8, vocab_size=30)
    explicit = dict(number_values=torch.arange(10.0, device=DEVICE), weights=torch.ones(3, 4, device=DEVICE))
    for method in ("confidence", "mse"):  # the group finish with weights; the values
        for reduction in REDUCTIONS:
            default = _value_and_grad(lambda x: ntl_loss(x, targets, ids, method=method, reduction=reduction), logits)
            given = _value_and_grad(
                lambda x: ntl_loss(x, targets, ids, method=method, reduction=reduction, **explicit), logits)
            for g, d in zip(given, default):
                torch.testing.assert_close(g, d, rtol=0, atol=0)
        default = fused_logprob_entropy_ntl(logits, labels, ids, ntl_targets=targets, method=method)
        given = fused_logprob_entropy_ntl(logits, labels, ids, ntl_targets=targets, method=method, **explicit)
        for g, d in zip(given, default):
            torch.testing.assert_close(g, d, rtol=0, atol=0)


def test_squash_factor_distances():
    """ntloss's rule: the closest wrong value costs 1, the farthest ``squash_factor``, equal values 0; a set with a
    single non-zero distance costs 1 (not NaN); mse ignores it."""
    ids = torch.tensor([3, 9, 1], device=DEVICE)
    logits = torch.full((2, 12), -30.0, device=DEVICE)
    logits[0, 9] = logits[1, 1] = 30.0  # all mass on slot 1 (value 10), then on slot 2 (value 1000)
    targets = torch.tensor([0, 0], device=DEVICE)  # value 0
    values = torch.tensor([0.0, 10.0, 1000.0], device=DEVICE)
    was = ntl_loss(logits, targets, ids, method="was", reduction="none", number_values=values, squash_factor=50.0)
    torch.testing.assert_close(was, torch.tensor([1.0, 50.0], device=DEVICE))
    two_values = ntl_loss(logits[:1, :10], targets[:1], ids[:2], method="was", reduction="none",
                          number_values=values[:2], squash_factor=50.0)
    torch.testing.assert_close(two_values, torch.tensor([1.0], device=DEVICE))
    mse = ntl_loss(logits, targets, ids, method="mse", reduction="none", number_values=values, squash_factor=50.0)
    torch.testing.assert_close(mse, torch.tensor([100.0, 1e6], device=DEVICE))


@pytest.mark.parametrize("path", ["reference", "kernels"])
def test_zero_weight_rows_are_not_read(path, monkeypatch):
    """A position of weight 0 counts like an ignored one for its logits: NaN there changes nothing and gets zero
    gradient; the count still includes it; a group of weight 0 gives 0."""
    if path == "reference":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    ids, values = _number_set(SETS["sixteen_tokens"], vocab_size=20, seed=9)
    logits, labels, targets, weights = _case((2, 4), ids, seed=10, vocab_size=20)
    targets = targets.clamp(min=0)
    weights[0, 1] = 0.0
    weights[1] = 0.0
    logits[0, 1] = float("nan")
    for method in ("confidence", "was"):
        x = logits.clone().requires_grad_()
        out = ntl_loss(x, targets, ids, method=method, reduction="sample", number_values=values, weights=weights,
                       return_counts=True)
        (grad,) = torch.autograd.grad(out.loss.sum(), x)
        assert torch.isfinite(out.loss).all() and out.loss[1] == 0 and out.counts.tolist() == [4, 4]
        assert torch.isfinite(grad).all() and (grad[0, 1] == 0).all() and (grad[1] == 0).all()
        fused = fused_logprob_entropy_ntl(x, labels, ids, ntl_targets=targets, method=method, weights=weights)
        (grad,) = torch.autograd.grad(fused.ntl.sum(), x)
        assert fused.ntl[0, 1] == 0 and (fused.ntl[1] == 0).all() and torch.isfinite(grad).all()


def _bad(**overrides):
    arguments = dict(logits=torch.randn(2, 3, 20), targets=torch.zeros(2, 3, dtype=torch.long),
                     digit_ids=torch.arange(12)) | overrides
    return lambda: ntl_loss(arguments.pop("logits"), arguments.pop("targets"), arguments.pop("digit_ids"),
                            **arguments)


BAD_ARGUMENTS = {
    "no_ids": (dict(digit_ids=torch.zeros(0, dtype=torch.long)), ValueError, "digit_ids must be a vector of K"),
    "too_many_ids": (dict(logits=torch.randn(2, 3, 3000), digit_ids=torch.arange(2049)), ValueError,
                     "digit_ids must be a vector of K"),
    "target_past_the_set": (dict(targets=torch.full((2, 3), 12)), ValueError, "slots 0..11"),
    "values_shape": (dict(number_values=torch.arange(10.0)), ValueError, r"number_values must have shape \[K\]"),
    "values_nan": (dict(number_values=torch.tensor([float("nan")] * 12)), ValueError, "number_values must be finite"),
    "values_bool": (dict(number_values=torch.ones(12, dtype=torch.bool)), TypeError, "number_values must be a real"),
    "weights_shape": (dict(weights=torch.ones(3, 2)), ValueError, "weights shape"),
    "weights_negative": (dict(weights=-torch.ones(2, 3)), ValueError, "weights must be finite and >= 0"),
    "weights_inf": (dict(weights=torch.full((2, 3), float("inf"))), ValueError, "weights must be finite"),
    "weights_int": (dict(weights=torch.ones(2, 3, dtype=torch.long)), TypeError, "weights must be a floating"),
    "squash_one": (dict(squash_factor=1.0), ValueError, "squash_factor must be a finite number > 1"),
    "squash_nan": (dict(squash_factor=float("nan")), ValueError, "squash_factor must be a finite number > 1"),
    "squash_bool": (dict(squash_factor=True), TypeError, "squash_factor must be None or a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_are_named(case):
    overrides, error, message = BAD_ARGUMENTS[case]
    with pytest.raises(error, match=message):
        _bad(**overrides)()


def test_weights_without_targets_are_refused():
    logits, labels = torch.randn(2, 20), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="weights weigh the per-position ntl"):
        fused_logprob_entropy_ntl(logits, labels, torch.arange(12), weights=torch.ones(2))
    with pytest.raises(ValueError, match="weights weigh the per-position ntl"):
        digit_ntl_from_hidden(torch.randn(2, 4), torch.randn(20, 4), torch.arange(12), weights=torch.ones(2))
