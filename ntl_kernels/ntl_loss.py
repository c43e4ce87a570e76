"""Digit Number Token Loss as one fused Triton kernel (forward) and one dense-gradient kernel (backward).

Read top to bottom: the per-method Triton helpers (shared with ``logprob_entropy_ntl.py``), the forward kernel,
the backward kernel, the host functions, the autograd Function and the public ``ntl_loss``. The math is stated in
``reference.py``; this file computes exactly that.

Forward, per block of rows of one reduction group: gather the 10 digit logits of each row (any strides, int64
offsets), log-softmax them in float32, form the method's per-position quantity ``q`` (the loss for nll/was/mse,
``p[y]`` for confidence), and sum ``q`` and the count of valid rows of the block. A group that fits one block is
finished by its program. Otherwise each program writes its block partials, and the last program to finish (an
atomic ticket) adds the partials of every group in a fixed order, tile by tile, and writes the group losses; the
result is deterministic and the whole forward is one launch.

Backward: the gradient of a group loss ``L = f(S / n)`` (``S`` the group's sum of ``q``, ``n`` its count) w.r.t.
the digit logits ``z`` of one of its rows, with ``p = softmax(z)`` and ``d_k = 1[k = y]``:

    dL/dq       = 1/n                                   for nll, was, mse (f = identity)
                = -1 / (n * max(S/n, 1e-8)), 0 if S/n < 1e-8    for confidence (f = -log max(., 1e-8))
    nll:        dq/dz_k = p_k - d_k
    confidence: dq/dz_k = p_y * (d_k - p_k)                       (q = p_y)
    was:        dq/dz_k = p_k * (|k - y| - q)                     (q = sum_i p_i |i - y|)
    mse:        dq/dz_k = 2 * (mu - y) * p_k * (k - mu)           (mu = sum_i p_i i, q = (mu - y)^2)

All other vocabulary columns get exactly zero, so the backward kernel writes the whole dense gradient once:
zeros everywhere but the digit columns, which get ``upstream * dL/dq * dq/dz``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .checks import (
    check_digit_ids,
    check_ignore_index,
    check_logits,
    check_method,
    check_reduction,
    check_targets,
    kernel_vector,
    use_triton,
)
from .launch import launch
from .reference import METHODS, NUM_DIGITS, ntl_loss_reference

METHOD_CODES = {name: code for code, name in enumerate(METHODS)}  # nll=0, confidence=1, was=2, mse=3
FORWARD_BLOCK_ROWS = 128  # rows (of 10 digit logits each) a forward program reads
REDUCE_TILE = 1024  # partials the last forward program adds per step, as [groups, partials per group]
PARTIAL_TILES = (2, 16, 128, 1024)  # partials-per-group widths of that tile (few shapes: few compiled variants)

# ``method`` is a runtime argument of every kernel (a uniform branch): one compiled binary serves the four methods.


@triton.jit
def digit_log_softmax(z):
    """log_softmax over the last axis of digit logits ``z [..., 16]`` (the 6 padding lanes hold -inf)."""
    shifted = z - tl.max(z, axis=-1, keep_dims=True)
    return shifted - tl.log(tl.sum(tl.exp(shifted), axis=-1, keep_dims=True))


@triton.jit
def method_quantity(log_p, y, method):
    """The per-position quantity ``q [..., 1]`` of digit log-probs ``log_p [..., 16]`` and digit targets
    ``y [..., 1]`` (or a scalar): -log p_y (nll), p_y (confidence), sum p_i |i - y| (was), (sum p_i i - y)^2 (mse)."""
    digits = tl.arange(0, 16)
    p = tl.exp(log_p)
    is_target = digits == y
    if method == 0:
        q = -tl.sum(tl.where(is_target, log_p, 0.0), axis=-1, keep_dims=True)
    elif method == 1:
        q = tl.sum(tl.where(is_target, p, 0.0), axis=-1, keep_dims=True)
    elif method == 2:
        q = tl.sum(p * tl.abs(digits - y).to(tl.float32), axis=-1, keep_dims=True)
    else:
        error = tl.sum(p * digits.to(tl.float32), axis=-1, keep_dims=True) - y.to(tl.float32)
        q = error * error
    return q


@triton.jit
def method_quantity_grad(log_p, y, q, method):
    """dq/dz ``[..., 16]`` for the digit logits z (module docstring); zero in the padding lanes."""
    digits = tl.arange(0, 16)
    p = tl.exp(log_p)
    is_target = (digits == y).to(tl.float32)
    if method == 0:
        grad = p - is_target
    elif method == 1:
        grad = q * (is_target - p)
    elif method == 2:
        grad = p * (tl.abs(digits - y).to(tl.float32) - q)
    else:
        expected_digit = tl.sum(p * digits.to(tl.float32), axis=-1, keep_dims=True)
        grad = 2.0 * (expected_digit - y.to(tl.float32)) * p * (digits.to(tl.float32) - expected_digit)
    return grad


@triton.jit
def finish_group(mean_quantity, method):
    """A group's loss from the mean of its quantities: the mean itself, or -log max(mean, 1e-8) for confidence."""
    loss = mean_quantity
    if method == 1:
        loss = -tl.log(tl.maximum(mean_quantity, 1e-8, tl.PropagateNan.ALL))  # NaN stays NaN on the GPU too
    return loss


@triton.jit
def finish_group_slope(mean_quantity, method):
    """d finish_group / d mean: 1, or -1/mean for confidence (0 below the floor, where the loss is constant)."""
    slope = tl.full(mean_quantity.shape, 1.0, tl.float32)
    if method == 1:
        slope = tl.where(mean_quantity >= 1e-8, -1.0 / tl.maximum(mean_quantity, 1e-8), 0.0)
    return slope


@triton.jit
def assert_digit_ids(digit_ids, vocab_size):
    """Device-side check of the 10 digit ids ``[16]`` (padding lanes ignored): in [0, V) and distinct.

    Compiled in only for launches with ``debug=True`` (the CUDA path); CPU inputs are checked on the host instead.
    """
    digits = tl.arange(0, 16)
    is_digit = digits < 10
    tl.device_assert(~is_digit | ((digit_ids >= 0) & (digit_ids < vocab_size)), "digit_ids must lie in [0, V)")
    same = (digit_ids[:, None] == digit_ids[None, :]) & is_digit[None, :]
    tl.device_assert(~is_digit | (tl.sum(same.to(tl.int32), axis=1) == 1), "digit_ids must be 10 distinct ids")


@triton.jit
def _rows_digit_quantity(
    logits_ptr, row, n_rows, inner_size, stride_outer, stride_inner, stride_vocab,
    digit_ids_ptr, targets_ptr, ignore_index, method,
):
    """For rows ``row [R]``: digit log-probs [R, 16], targets y [R, 1], validity [R] and quantity q [R, 1]."""
    digits = tl.arange(0, 16)
    digit_mask = digits < 10
    digit_ids = tl.load(digit_ids_ptr + digits, mask=digit_mask, other=0).to(tl.int64)
    row_mask = row < n_rows
    row64 = row.to(tl.int64)
    row_offset = (row64 // inner_size) * stride_outer + (row64 % inner_size) * stride_inner
    offsets = row_offset[:, None] + digit_ids[None, :] * stride_vocab
    z = tl.load(logits_ptr + offsets, mask=row_mask[:, None] & digit_mask[None, :], other=0.0).to(tl.float32)
    log_p = digit_log_softmax(tl.where(digit_mask[None, :], z, float("-inf")))
    target = tl.load(targets_ptr + row64, mask=row_mask, other=ignore_index).to(tl.int32)
    tl.device_assert(
        (target == ignore_index) | ((target >= 0) & (target < 10)), "targets must be digit values 0..9 or ignore_index"
    )
    valid = row_mask & (target != ignore_index)
    y = tl.where(valid, target, 0)[:, None]
    q = tl.where(valid[:, None], method_quantity(log_p, y, method), 0.0)
    return log_p, y, valid, q


@triton.jit
def _store_groups(loss_ptr, quantity_sum_ptr, count_ptr, groups, quantity_sum, count, mask, method):
    """Finish groups from their quantity sums and counts (float): loss (0 without digits), sum and int64 count."""
    loss = finish_group(quantity_sum / tl.maximum(count, 1.0), method)
    tl.store(loss_ptr + groups, tl.where(count > 0, loss, 0.0), mask=mask)
    tl.store(quantity_sum_ptr + groups, quantity_sum, mask=mask)
    tl.store(count_ptr + groups, count.to(tl.int64), mask=mask)


# Sizes, strides and flags are not specialised (no recompile per batch shape): only stride_vocab (== 1) matters
# for these gathers of 10 scattered columns; the backward also keeps vocab_size (the 16-byte alignment of its rows).
@triton.jit(do_not_specialize=["n_rows", "group_size", "n_groups", "vocab_size", "inner_size", "stride_outer",
                               "stride_inner", "ignore_index", "method"])
def _ntl_forward_kernel(
    logits_ptr, targets_ptr, digit_ids_ptr,
    loss_ptr, quantity_sum_ptr, count_ptr, partial_ptr, ticket_ptr,
    n_rows, group_size, n_groups, vocab_size, inner_size, stride_outer, stride_inner, stride_vocab, ignore_index,
    method,
    PER_ROW: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_GROUPS: tl.constexpr, BLOCK_PARTIALS: tl.constexpr,
):
    group = tl.program_id(0)
    block = tl.program_id(1)
    assert_digit_ids(tl.load(digit_ids_ptr + tl.arange(0, 16), mask=tl.arange(0, 16) < 10, other=-1), vocab_size)
    local = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row = group * group_size + local
    row = tl.where(local < group_size, row, n_rows)  # rows past the group's end are masked like rows past the last
    _, _, valid, q = _rows_digit_quantity(
        logits_ptr, row, n_rows, inner_size, stride_outer, stride_inner, stride_vocab,
        digit_ids_ptr, targets_ptr, ignore_index, method,
    )
    q = tl.sum(q, axis=1)
    if PER_ROW:  # reduction "none": every row is its own group, finish it here
        _store_groups(loss_ptr, quantity_sum_ptr, count_ptr, row, q, valid.to(tl.float32), row < n_rows, method)
    else:
        quantity_sum = tl.sum(q, axis=0)
        count = tl.sum(valid.to(tl.float32), axis=0)
        blocks_per_group = tl.num_programs(1)
        if blocks_per_group == 1:  # the group fits this block
            _store_groups(loss_ptr, quantity_sum_ptr, count_ptr, group, quantity_sum, count, True, method)
        else:
            partial = partial_ptr + (group * blocks_per_group + block) * 2
            tl.store(partial, quantity_sum)
            tl.store(partial + 1, count)
            # The last program to take a ticket sees every other program's partials: the barrier gathers this
            # program's stores before the release, the acquire orders the last program's loads after all of them.
            tl.debug_barrier()
            ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")
            if ticket == n_groups * blocks_per_group - 1:
                # Tiles are accumulated and reduced once after the loop: summing each loaded tile inside the loop
                # (acc += tl.sum(tile, 1)) crashes Triton <= 3.8's TritonGPUOptimizeThreadLocality pass.
                for group_start in range(0, n_groups, BLOCK_GROUPS):
                    groups = group_start + tl.arange(0, BLOCK_GROUPS)
                    group_mask = groups < n_groups
                    quantity_tile = tl.zeros([BLOCK_GROUPS, BLOCK_PARTIALS], dtype=tl.float32)
                    count_tile = tl.zeros([BLOCK_GROUPS, BLOCK_PARTIALS], dtype=tl.float32)
                    for block_start in range(0, blocks_per_group, BLOCK_PARTIALS):
                        blocks = block_start + tl.arange(0, BLOCK_PARTIALS)
                        at = partial_ptr + (groups[:, None] * blocks_per_group + blocks[None, :]) * 2
                        mask = group_mask[:, None] & (blocks < blocks_per_group)[None, :]
                        quantity_tile += tl.load(at, mask=mask, other=0.0, volatile=True)
                        count_tile += tl.load(at + 1, mask=mask, other=0.0, volatile=True)
                    _store_groups(
                        loss_ptr, quantity_sum_ptr, count_ptr, groups,
                        tl.sum(quantity_tile, axis=1), tl.sum(count_tile, axis=1), group_mask, method,
                    )


@triton.jit(do_not_specialize=["n_rows", "group_size", "inner_size", "stride_outer", "stride_inner", "ignore_index",
                               "method"])
def _ntl_backward_kernel(
    grad_logits_ptr, grad_loss_ptr, quantity_sum_ptr, count_ptr,
    logits_ptr, targets_ptr, digit_ids_ptr,
    n_rows, vocab_size, group_size, inner_size, stride_outer, stride_inner, stride_vocab, ignore_index, method,
    BLOCK_ROWS: tl.constexpr, BLOCK_VOCAB: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = row < n_rows
    block_start = tl.program_id(1) * BLOCK_VOCAB
    cols = block_start + tl.arange(0, BLOCK_VOCAB)
    grad_row = grad_logits_ptr + row.to(tl.int64)[:, None] * vocab_size
    # The whole block gets zeros first (one mask per row: full-width vector stores), digit columns included ...
    zeros = tl.zeros([BLOCK_ROWS, BLOCK_VOCAB], dtype=grad_logits_ptr.dtype.element_ty)
    tl.store(grad_row + cols[None, :], zeros, mask=row_mask[:, None] & (cols < vocab_size)[None, :])

    digits = tl.arange(0, 16)
    digit_ids = tl.load(digit_ids_ptr + digits, mask=digits < 10, other=-1).to(tl.int64)
    owns_digits = (digit_ids >= block_start) & (digit_ids < block_start + BLOCK_VOCAB)
    if tl.max(owns_digits.to(tl.int32), axis=0) > 0:
        log_p, y, valid, q = _rows_digit_quantity(
            logits_ptr, row, n_rows, inner_size, stride_outer, stride_inner, stride_vocab,
            digit_ids_ptr, targets_ptr, ignore_index, method,
        )
        group = row // group_size
        upstream = tl.load(grad_loss_ptr + group, mask=row_mask, other=0.0)
        count = tl.load(count_ptr + group, mask=row_mask, other=0).to(tl.float32)
        mean = tl.load(quantity_sum_ptr + group, mask=row_mask, other=0.0) / tl.maximum(count, 1.0)
        scale = upstream / tl.maximum(count, 1.0) * finish_group_slope(mean, method)
        # Selected, not scaled by 0: a row that does not count gets exactly 0 even if its logits are NaN or inf.
        grad = tl.where(valid[:, None], scale[:, None] * method_quantity_grad(log_p, y, q, method), 0.0)
        grad = grad.to(grad_logits_ptr.dtype.element_ty)
        # ... then the digit columns get their gradient. Other threads of this program zeroed some of them: the
        # barrier orders those stores before these.
        tl.debug_barrier()
        tl.store(grad_row + digit_ids[None, :], grad, mask=row_mask[:, None] & owns_digits[None, :])


def _row_layout(logits: torch.Tensor):
    """Rows of ``logits [..., V]`` as (outer, inner) with two strides, merging leading dims where strides allow.

    Returns ``(inner_size, stride_outer, stride_inner)`` or None when the leading dims cannot be expressed so.
    Rows that merge into one dimension get ``inner_size = 1``, which the kernels specialise on (no division).
    """
    dims = [(size, stride) for size, stride in zip(logits.shape[:-1], logits.stride()[:-1]) if size != 1]
    merged: list[list[int]] = []
    for size, stride in dims:
        if merged and merged[-1][1] == stride * size:
            merged[-1] = [merged[-1][0] * size, stride]
        else:
            merged.append([size, stride])
    if len(merged) > 2:
        return None
    if len(merged) < 2:
        return 1, (merged[0][1] if merged else 0), 0
    (_, stride_outer), (inner_size, stride_inner) = merged
    return inner_size, stride_outer, stride_inner


def _launch_layout(logits: torch.Tensor, digit_ids: torch.Tensor):
    """What the kernels need to address the digit logits without copying ``logits``.

    The rare leading layouts that two strides cannot express gather the 10 digit columns first (a [..., 10]
    copy, never the full vocabulary) and address those.
    """
    layout = _row_layout(logits)
    if layout is None:
        logits = logits.index_select(-1, digit_ids).contiguous()
        digit_ids = torch.arange(NUM_DIGITS, device=logits.device)
        layout = _row_layout(logits)
    return logits, digit_ids, layout


def _groups(targets: torch.Tensor, reduction: str) -> tuple[int, int]:
    """(number of groups, rows per group) of the flattened rows of ``targets`` (in its own shape)."""
    n_rows = targets.numel()
    if reduction == "none":
        return n_rows, 1
    if reduction == "sample":
        n_groups = targets.shape[0]
        return n_groups, (n_rows // n_groups if n_groups else 0)
    return 1, n_rows


def kernel_options(tensor: torch.Tensor) -> dict:
    """Launch options of every kernel here: on the GPU the value checks (``tl.device_assert``) are compiled in —
    the CUDA path validates targets, labels and digit ids on the device, without a host sync; int overflow checks
    stay off (they would guard every index computation)."""
    return {"debug": tensor.device.type != "cpu", "sanitize_overflow": False}


def _ntl_forward(logits, row_targets, digit_ids, method, reduction, groups, ignore_index):
    """Launch the forward over ``row_targets`` (``kernel_vector`` of the targets) in ``groups`` (``_groups``)."""
    kernel_logits, kernel_digit_ids, (inner_size, stride_outer, stride_inner) = _launch_layout(logits, digit_ids)
    n_rows = row_targets.numel()
    n_groups, group_size = groups
    device = logits.device
    loss = torch.empty(n_groups, device=device, dtype=torch.float32)
    quantity_sum = torch.empty(n_groups, device=device, dtype=torch.float32)
    count = torch.empty(n_groups, device=device, dtype=torch.int64)
    if n_groups == 0:
        return loss, quantity_sum, count
    if group_size == 0:  # "sample" over an empty second dimension: groups without positions
        return loss.zero_(), quantity_sum.zero_(), count.zero_()
    per_row = reduction == "none"
    blocks_per_group = triton.cdiv(n_rows if per_row else group_size, FORWARD_BLOCK_ROWS)
    partials_per_group = 1 if per_row else blocks_per_group
    # The last program adds the partials [groups, blocks] in tiles of REDUCE_TILE; one tile shape per power of 8.
    block_partials = next(p for p in PARTIAL_TILES if p >= min(partials_per_group, REDUCE_TILE))
    if partials_per_group > 1:
        partial = torch.empty(n_groups * partials_per_group * 2, device=device, dtype=torch.float32)
        ticket = torch.zeros(1, device=device, dtype=torch.int32)
    else:  # every group is finished by its own program: partials and ticket unused (same types: same variant)
        partial, ticket = loss, torch.empty(1, device=device, dtype=torch.int32)
    launch(
        _ntl_forward_kernel, (1 if per_row else n_groups, blocks_per_group),
        kernel_logits, row_targets, kernel_digit_ids,
        loss, quantity_sum, count, partial, ticket,
        n_rows, n_rows if per_row else group_size, n_groups, kernel_logits.shape[-1], inner_size, stride_outer,
        stride_inner, kernel_logits.stride(-1), ignore_index, METHOD_CODES[method],
        PER_ROW=per_row, BLOCK_ROWS=FORWARD_BLOCK_ROWS, BLOCK_GROUPS=REDUCE_TILE // block_partials,
        BLOCK_PARTIALS=block_partials, **kernel_options(logits),
    )
    return loss, quantity_sum, count


def _backward_blocks(vocab_size: int) -> tuple[int, int]:
    """(rows, columns) of a backward program: rows of the 10 gathered digit columns (``V <= 16``: the hidden-state
    path, un-addressable layouts) in tall blocks, vocabulary rows in blocks of up to 8192 columns. A program is
    mostly zero-fill stores after ~250 instructions of set-up (row, digit-id and ownership logic): 4 x 8192 gives
    each of its 128 threads 256 elements to spread that over (1.5 SASS instructions per element as launched, against
    4.9 at 4 x 2048) at 30 registers, 100% occupancy, 128-bit stores (bench/results/gpu_static_report.md). A shorter
    vocabulary gets the next power of two, so no program is mostly masked off."""
    if vocab_size <= 16:
        return 64, 16
    return 4, min(8192, triton.next_power_of_2(vocab_size))


def _ntl_backward(grad_loss, quantity_sum, count, logits, row_targets, digit_ids, method, group_size, ignore_index):
    vocab_size = logits.shape[-1]
    grad_logits = torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)
    n_rows = row_targets.numel()
    if n_rows == 0:
        return grad_logits
    kernel_logits, kernel_digit_ids, (inner_size, stride_outer, stride_inner) = _launch_layout(logits, digit_ids)
    if kernel_logits is not logits:
        # The digit columns were gathered; scatter the gradient to their real positions in the vocabulary.
        grad_digits = _ntl_backward(
            grad_loss, quantity_sum, count, kernel_logits, row_targets, kernel_digit_ids, method, group_size,
            ignore_index,
        )
        return grad_logits.zero_().index_copy_(-1, digit_ids, grad_digits)
    block_rows, block_vocab = _backward_blocks(vocab_size)
    launch(
        _ntl_backward_kernel, (triton.cdiv(n_rows, block_rows), triton.cdiv(vocab_size, block_vocab)),
        grad_logits, grad_loss.float().contiguous(), quantity_sum, count,
        kernel_logits, row_targets, kernel_digit_ids,
        n_rows, vocab_size, group_size, inner_size, stride_outer, stride_inner, kernel_logits.stride(-1),
        ignore_index, METHOD_CODES[method],
        BLOCK_ROWS=block_rows, BLOCK_VOCAB=block_vocab, **kernel_options(logits),
    )
    return grad_logits


class _NTLLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, digit_ids, method, reduction, ignore_index):
        # The kernels read targets and digit ids as contiguous vectors, whatever view the caller passed.
        groups = _groups(targets, reduction)
        row_targets, digit_ids = kernel_vector(targets), kernel_vector(digit_ids, torch.long)
        loss, quantity_sum, count = _ntl_forward(logits, row_targets, digit_ids, method, reduction, groups,
                                                 ignore_index)
        ctx.save_for_backward(logits, row_targets, digit_ids, quantity_sum, count)
        ctx.options = (method, groups[1], ignore_index)
        ctx.mark_non_differentiable(count)
        return loss, count

    @staticmethod
    def backward(ctx, grad_loss, grad_count):
        logits, row_targets, digit_ids, quantity_sum, count = ctx.saved_tensors
        method, group_size, ignore_index = ctx.options
        grad_logits = _ntl_backward(
            grad_loss.reshape(-1), quantity_sum, count, logits, row_targets, digit_ids, method, group_size,
            ignore_index,
        )
        return grad_logits, None, None, None, None, None


class NTLOutput(NamedTuple):
    """``loss`` and the number of valid (digit) positions behind each of its entries, same shape."""

    loss: torch.Tensor
    counts: torch.Tensor


def ntl_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    digit_ids,
    *,
    method: str = "nll",
    reduction: str = "mean",
    ignore_index: int = -100,
    return_counts: bool = False,
):
    """Digit Number Token Loss over the 10 digit logits of vocabulary-sized logits.

    Args:
        logits: ``[..., V]`` float32/bfloat16/float16 (float64 on the reference path), any leading shape and
            strides (views of [B, T, V], every other row, a sliced vocabulary) — never copied whole.
        targets: ``[...]`` (the logits' shape without V) integer digit values 0..9, or ``ignore_index``.
            ``digit_targets`` turns label token ids into this form.
        digit_ids: 10 distinct token ids in [0, V), entry i is the token of digit i (``digit_token_ids``).
        method: ``"nll"`` (-log p[y]), ``"confidence"`` (-log of the group's mean p[y], floored at 1e-8),
            ``"was"`` (sum_i p_i |i - y|) or ``"mse"`` ((y - sum_i p_i i)^2); p = softmax over the digit logits.
        reduction: ``"none"`` -> ``targets.shape``; ``"sample"`` -> ``[targets.shape[0]]`` (mean over the valid
            positions of each entry of the first dimension); ``"mean"`` -> ``[]`` over all valid positions.
        ignore_index: the target of positions that do not count; an int that fits in int32.
        return_counts: also return the number of valid positions behind each loss entry (0 means "no digits",
            whose loss is 0 with zero gradient, not "perfect").
    Returns:
        float32 loss (float64 for float64 logits), or ``NTLOutput(loss, counts)`` with int64 counts.
        The gradient w.r.t. ``logits`` is dense in ``logits``' dtype and zero outside the digit columns.

    Non-finite logits: only the 10 digit columns of valid positions are read. A NaN or +inf there gives a NaN loss
    for its group (its position with ``"none"``) and a NaN gradient in that row only (the group's other rows keep
    finite gradients: zero for ``"confidence"``); other groups are unaffected. Ignored positions,
    groups without digits and non-digit columns get exactly zero gradient whatever they hold. A -inf digit logit is
    a digit of probability 0 (an infinite nll if it is the target).

    CUDA tensors run the Triton kernels without a host sync: out-of-range targets or digit ids stop the kernel with
    a device-side assert (reported at the next synchronisation, as ``cross_entropy`` does). CPU tensors run
    ``ntl_loss_reference`` (the same numbers), or the Triton kernels under ``TRITON_INTERPRET=1``; their values are
    checked on the host (ValueError).
    """
    check_logits(logits)
    ignore_index = check_ignore_index(ignore_index)
    digit_ids = check_digit_ids(digit_ids, logits.shape[-1], logits.device)
    check_targets(targets, logits.shape[:-1], logits.device, ignore_index)
    check_method(method)
    check_reduction(reduction, targets)
    if use_triton(logits) and logits.dtype != torch.float64:
        loss, counts = _NTLLossFunction.apply(logits, targets, digit_ids, method, reduction, ignore_index)
        shape = targets.shape if reduction == "none" else targets.shape[:1] if reduction == "sample" else ()
        loss, counts = loss.reshape(shape), counts.reshape(shape)
    else:
        loss, counts = ntl_loss_reference(logits, targets, digit_ids, method, reduction, ignore_index)
    return NTLOutput(loss, counts) if return_counts else loss
