"""Non-finite and out-of-range values reaching the ops: the documented outcome on both paths, never a NaN where
the docs promise a zero, never a silent substitute.

Non-finite logits (NaN, +inf) are put, one at a time, in a row that counts or one that does not (ignored label or
target, a group without digits) and in a digit column or another column; the op on those logits is compared with
the op on the same logits holding a finite value there. What does not count must give exactly the clean values
and gradients (zero gradient in an ignored row); what counts must give NaN in its own row or group and nowhere
else. Temperatures <= 0, NaN or inf, and ignore_index values the kernels cannot compare, are refused by name.
"""

import dataclasses

import pytest
import torch

from ntl_kernels import digit_logits_from_hidden, digit_ntl_from_hidden, fused_logprob_entropy_ntl, ntl_loss
from ntl_kernels import logprob_entropy_ntl as fused_module
from tests.test_views import DEVICE, path  # noqa: F401 (``path`` is the reference/kernels fixture)

PATHS = ("reference", "kernels")
VOCAB_SIZE = 40
DIGIT_IDS = torch.tensor([3, 31, 17, 8, 22, 5, 38, 12, 27, 1])
OTHER_COLUMN = 20  # not a digit, not a label below
POISONS = {"nan": float("nan"), "inf": float("inf")}
CLEAN_VALUE = 0.5


def _poisoned(logits: torch.Tensor, row: tuple, column: int, value: float) -> tuple:
    """(clean, poisoned) copies of ``logits`` differing at ``logits[row + (column,)]``."""
    clean, poisoned = logits.clone(), logits.clone()
    clean[row + (column,)] = CLEAN_VALUE
    poisoned[row + (column,)] = value
    return clean.to(DEVICE), poisoned.to(DEVICE)


def _value_and_grads(fn, leaves: list, upstream_seed: int = 0):
    """``fn(*leaves)``'s outputs and the gradient of a random weighting of them w.r.t. each leaf."""
    leaves = [leaf.detach().clone().requires_grad_() for leaf in leaves]
    outputs = fn(*leaves)
    generator = torch.Generator().manual_seed(upstream_seed)
    objective = sum((out * torch.randn(out.shape, generator=generator).to(out)).sum() for out in outputs)
    return [out.detach() for out in outputs], torch.autograd.grad(objective, leaves)


def _assert_identical(got: torch.Tensor, expected: torch.Tensor):
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=False)


# ---- ntl_loss: groups of 4 rows; group 0 has digits and an ignored row, group 2 has no digits ----

NTL_TARGETS = torch.tensor([[3, -100, 7, 0], [1, 9, -100, 4], [-100, -100, -100, -100]])
NTL_PLACES = {  # (row, column): a digit column of a counted row, and the rest
    "counted_digit": ((0, 0), DIGIT_IDS[5].item()),
    "counted_other": ((0, 0), OTHER_COLUMN),
    "ignored_digit": ((0, 1), DIGIT_IDS[2].item()),
    "ignored_other": ((0, 1), OTHER_COLUMN),
    "group_without_digits": ((2, 3), DIGIT_IDS[0].item()),
}


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("reduction", ["none", "sample", "mean"])
@pytest.mark.parametrize("method, poison", [("nll", "nan"), ("confidence", "nan"), ("mse", "inf")])
@pytest.mark.parametrize("place", NTL_PLACES)
def test_ntl_loss_non_finite_logits(path, reduction, method, poison, place):
    row, column = NTL_PLACES[place]
    logits = torch.randn(3, 4, VOCAB_SIZE, generator=torch.Generator().manual_seed(0)) * 2
    clean, poisoned = _poisoned(logits, row, column, POISONS[poison])
    targets, digit_ids = NTL_TARGETS.to(DEVICE), DIGIT_IDS.to(DEVICE)

    def loss(x):
        return [ntl_loss(x, targets, digit_ids, method=method, reduction=reduction)]

    (clean_loss,), (clean_grad,) = _value_and_grads(loss, [clean])
    (got_loss,), (got_grad,) = _value_and_grads(loss, [poisoned])
    if place != "counted_digit":  # never read, or read by a position that does not count
        _assert_identical(got_loss, clean_loss)
        _assert_identical(got_grad, clean_grad)
        if place != "counted_other":
            assert (got_grad[row] == 0).all()
        return
    group = {"none": row, "sample": row[:1], "mean": ()}[reduction]
    assert got_loss[group].isnan().all()
    others = torch.ones_like(got_loss, dtype=torch.bool)
    others[group] = False
    _assert_identical(got_loss[others], clean_loss[others])
    assert got_grad[row].isnan().any()
    rows_elsewhere = torch.ones(3, 4, dtype=torch.bool, device=DEVICE)
    rows_elsewhere[row] = False
    assert torch.isfinite(got_grad[rows_elsewhere]).all()  # the group's other rows included
    in_other_groups = torch.ones(3, 4, dtype=torch.bool, device=DEVICE)
    in_other_groups[group] = False
    _assert_identical(got_grad[in_other_groups], clean_grad[in_other_groups])


# ---- fused_logprob_entropy_ntl: row 1 has a label and a digit target, row 2 neither ----

FUSED_LABELS = torch.tensor([4, 9, -100, DIGIT_IDS[6].item()])
FUSED_TARGETS = torch.tensor([-100, 2, -100, 6])
FUSED_ROWS = {"counted": 1, "ignored": 2}
FUSED_COLUMNS = {"digit": DIGIT_IDS[8].item(), "other": OTHER_COLUMN}
# Each output alone and the pair verl's loss takes, each with one poison (both poisons for ntl)
GRADIENT_CASES = [
    (("log_probs",), "nan"), (("entropy",), "inf"), (("digit_log_probs",), "nan"), (("ntl",), "nan"),
    (("ntl",), "inf"), (("log_probs", "ntl"), "nan"),
]


def _counts(output: str, row_kind: str, column_kind: str) -> bool:
    """Whether a non-finite logit at (row, column) enters ``output`` of that row (the op's docstring)."""
    if output == "entropy":
        return True
    if output == "log_probs":
        return row_kind == "counted"
    if output == "digit_log_probs":
        return column_kind == "digit"
    return row_kind == "counted" and column_kind == "digit"  # ntl


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("row_kind", FUSED_ROWS)
@pytest.mark.parametrize("column_kind", FUSED_COLUMNS)
@pytest.mark.parametrize("gradient_of, poison", GRADIENT_CASES,
                         ids=lambda part: "+".join(part) if isinstance(part, tuple) else part)
def test_fused_non_finite_logits(path, row_kind, column_kind, gradient_of, poison):
    row = FUSED_ROWS[row_kind]
    logits = torch.randn(4, VOCAB_SIZE, generator=torch.Generator().manual_seed(1)) * 2
    clean, poisoned = _poisoned(logits, (row,), FUSED_COLUMNS[column_kind], POISONS[poison])
    labels, targets, digit_ids = FUSED_LABELS.to(DEVICE), FUSED_TARGETS.to(DEVICE), DIGIT_IDS.to(DEVICE)

    def outputs(x):
        out = fused_logprob_entropy_ntl(x, labels, digit_ids, temperature=0.8, ntl_targets=targets, method="was")
        return [getattr(out, name) for name in gradient_of]

    clean_out, (clean_grad,) = _value_and_grads(outputs, [clean])
    got_out, (got_grad,) = _value_and_grads(outputs, [poisoned])
    others = torch.arange(4, device=DEVICE) != row
    for name, got, expected in zip(gradient_of, got_out, clean_out):
        _assert_identical(got[others], expected[others])
        if _counts(name, row_kind, column_kind):
            assert got[row].isnan().any(), name
        else:
            _assert_identical(got[row], expected[row])
    _assert_identical(got_grad[others], clean_grad[others])
    if any(_counts(name, row_kind, column_kind) for name in gradient_of):
        assert got_grad[row].isnan().any()
    else:
        _assert_identical(got_grad[row], clean_grad[row])
        if row_kind == "ignored" and "digit_log_probs" not in gradient_of:
            assert (got_grad[row] == 0).all()


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("row_kind", ["counted", "ignored"])
@pytest.mark.parametrize("poison", POISONS)
def test_hidden_non_finite_row(path, row_kind, poison):
    """NaN/inf in one row of the hidden states: that row's digit outputs only; an ignored row's ntl gradient in
    ``hidden`` is exactly zero."""
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 8, generator=generator)
    weight = torch.randn(VOCAB_SIZE, 8, generator=generator) / 8**0.5
    row = FUSED_ROWS[row_kind]
    clean, poisoned = _poisoned(hidden, (row,), 3, POISONS[poison])
    targets, digit_ids = FUSED_TARGETS.to(DEVICE), DIGIT_IDS.to(DEVICE)

    def ntl(h):
        return [digit_ntl_from_hidden(h, weight.to(DEVICE), digit_ids, ntl_targets=targets, method="nll").ntl]

    (clean_ntl,), (clean_grad,) = _value_and_grads(ntl, [clean])
    (got_ntl,), (got_grad,) = _value_and_grads(ntl, [poisoned])
    others = torch.arange(4, device=DEVICE) != row
    _assert_identical(got_ntl[others], clean_ntl[others])
    _assert_identical(got_grad[others], clean_grad[others])
    if row_kind == "ignored":
        assert got_ntl[row] == 0 and (got_grad[row] == 0).all()
    else:
        assert got_ntl[row].isnan() and got_grad[row].isnan().any()
    digit_log_probs = digit_ntl_from_hidden(poisoned, weight.to(DEVICE), digit_ids).digit_log_probs
    assert digit_log_probs[row].isnan().all() and torch.isfinite(digit_log_probs[others]).all()


# ---- temperatures and ignore_index ----

def _call(op: str, *, temperature=1.0, ignore_index=-100):
    """One call of a public op on tiny inputs, with the given temperature (where it takes one) and ignore_index
    (which then marks the ignored targets when it is an int)."""
    logits = torch.randn(2, 3, VOCAB_SIZE).to(DEVICE)
    targets = torch.tensor([[1, -100, 3], [0, 9, -100]]).to(DEVICE)
    if type(ignore_index) is int:
        targets = torch.where(targets == -100, ignore_index, targets)
    digit_ids = DIGIT_IDS.to(DEVICE)
    if op == "ntl_loss":
        return ntl_loss(logits, targets, digit_ids, ignore_index=ignore_index)
    if op == "fused":
        labels = torch.where((targets >= 0) & (targets < 10), digit_ids[targets.clamp(0, 9)], targets)
        return fused_logprob_entropy_ntl(logits, labels, digit_ids, temperature=temperature, ntl_targets=targets,
                                         ignore_index=ignore_index)
    hidden, weight = torch.randn(2, 3, 8).to(DEVICE), torch.randn(VOCAB_SIZE, 8).to(DEVICE)
    if op == "hidden_logits":
        return digit_logits_from_hidden(hidden, weight, digit_ids, temperature)
    return digit_ntl_from_hidden(hidden, weight, digit_ids, temperature=temperature, ntl_targets=targets,
                                 ignore_index=ignore_index)


TEMPERATURE_OPS = ("fused", "hidden_logits", "hidden_ntl")
BAD_TEMPERATURES = {
    "zero": 0.0, "negative": -1.0, "nan": float("nan"), "inf": float("inf"), "negative_zero": -0.0,
}


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("op", TEMPERATURE_OPS)
@pytest.mark.parametrize("bad", BAD_TEMPERATURES)
@pytest.mark.parametrize("form", ["number", "per_row", "one_bad_row"])
def test_bad_temperatures_are_refused(path, op, bad, form):
    value = BAD_TEMPERATURES[bad]
    if form == "number":
        temperature = value
    else:
        temperature = torch.full((2, 3), 0.7) if form == "one_bad_row" else torch.full((2, 3), value)
        temperature[1, 2] = value
        temperature = temperature.to(DEVICE)
    with pytest.raises(ValueError, match="temperature must be positive"):
        _call(op, temperature=temperature)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("op", TEMPERATURE_OPS)
def test_tiny_positive_temperatures_are_floored_as_verl_does(path, op):
    torch.manual_seed(4)
    floored = _call(op, temperature=torch.full((2, 3), 1e-8, device=DEVICE))
    torch.manual_seed(4)
    tiny = _call(op, temperature=torch.full((2, 3), 1e-12, device=DEVICE))
    for got, expected in zip(torch.utils._pytree.tree_leaves(tiny), torch.utils._pytree.tree_leaves(floored)):
        torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter stands in for the device here")
def test_the_forward_kernel_asserts_the_temperature_on_the_device(monkeypatch):
    """The CUDA path reads no value on the host: the kernel's device-side assert refuses a bad temperature. Run
    under the interpreter with the assert compiled in and the host check switched off."""
    from triton.runtime import interpreter

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(fused_module, "host_checks_values", lambda tensor: False)
    # The interpreter compiles device_assert in only when its own options say debug (kernel_options' debug=True
    # does that on the GPU).
    monkeypatch.setattr(interpreter.interpreter_builder, "options",
                        dataclasses.replace(interpreter.interpreter_builder.options, debug=True))
    good = _call("fused", temperature=torch.full((2, 3), 0.7))
    assert torch.isfinite(good.entropy).all()
    for value in BAD_TEMPERATURES.values():
        with pytest.raises(Exception, match="temperature must be positive and finite"):
            _call("fused", temperature=torch.full((2, 3), value))


BAD_IGNORE_INDEX = {  # 2**40 was compared in int32 by the kernels: truncated to 0, its rows scored as digit 0
    "beyond_int32": (2**40, ValueError, "ignore_index must fit in int32"),
    "below_int32": (-(2**31) - 1, ValueError, "ignore_index must fit in int32"),
    "float": (-100.0, TypeError, "ignore_index must be an int"),
    "bool": (True, TypeError, "ignore_index must be an int"),
    "none": (None, TypeError, "ignore_index must be an int"),
}


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("op", ["ntl_loss", "fused", "hidden_ntl"])
@pytest.mark.parametrize("bad", BAD_IGNORE_INDEX)
def test_ignore_index_the_kernels_cannot_compare_is_refused(path, op, bad):
    value, error, message = BAD_IGNORE_INDEX[bad]
    with pytest.raises(error, match=message):
        _call(op, ignore_index=value)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("ignore_index", [-(2**31), 2**31 - 1])
def test_ignore_index_at_the_int32_limits_masks_like_minus_100(path, ignore_index):
    logits = torch.randn(5, VOCAB_SIZE, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    targets = torch.tensor([1, -100, 3, -100, 0]).to(DEVICE)
    expected = ntl_loss(logits, targets, DIGIT_IDS.to(DEVICE), reduction="none")
    moved = torch.where(targets == -100, ignore_index, targets)
    got = ntl_loss(logits, moved, DIGIT_IDS.to(DEVICE), reduction="none", ignore_index=ignore_index)
    _assert_identical(got, expected)
