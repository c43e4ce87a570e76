"""Number Token Loss as one fused Triton kernel (forward) and one dense-gradient kernel (backward).

Read top to bottom: the per-method Triton helpers (shared with ``logprob_entropy_ntl.py``), the forward kernel,
the backward kernel, the host functions, the autograd Function and the public ``ntl_loss``. The math is stated in
``reference.py``; this file computes exactly that.

A row's number-token vector has BLOCK_K lanes (``number_block``: the next power of two >= K, 16 for the 10
digits, 2,048 for Llama-3's 1,110 tokens '0'..'999'); lanes past K are padding (logit -inf, probability 0).

Forward, per block of rows of one reduction group: gather the K number-token logits of each row (any strides,
int64 offsets), log-softmax them in float32, form the method's per-position quantity ``q`` (the loss for
nll/was/mse, ``p[y]`` for confidence), and sum ``q`` (``w q`` with weights), the count of valid rows (and the sum
of their weights) of the block. A group that fits one block is finished by its program. Otherwise each program
writes its block partials, and the last program to finish (an atomic ticket) adds the partials of every group in a
fixed order, tile by tile, and writes the group losses; the result is deterministic and the whole forward is one
launch.

Backward: the gradient of a group loss ``L = f(S / n)`` (``S`` the group's sum of ``q``, ``n`` its count;
weighted, ``S = sum w q`` and ``n = sum w``) w.r.t. the number-token logits ``z`` of one of its rows, with
``p = softmax(z)``, ``d_k = 1[k = y]``, ``v`` the set's values and ``dist_k = dist(v_k, v_y)`` (reference.py):

    dL/dq       = 1/n   (w/n weighted; w for "none", whose loss is w f(q))     for nll, was, mse (f = identity)
                = -1 / (n * max(S/n, 1e-8)), 0 if S/n < 1e-8 (times w)          for confidence (f = -log max(., 1e-8))
    nll:        dq/dz_k = p_k - d_k
    confidence: dq/dz_k = p_y * (d_k - p_k)                       (q = p_y)
    was:        dq/dz_k = p_k * (dist_k - q)                      (q = sum_i p_i dist_i; dist does not depend on z)
    mse:        dq/dz_k = 2 * (mu - v_y) * p_k * (v_k - mu)       (mu = sum_i p_i v_i, q = (mu - v_y)^2)

All other vocabulary columns get exactly zero, so the backward kernel writes the whole dense gradient once:
zeros everywhere but the number-token columns, which get ``upstream * dL/dq * dq/dz``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .checks import (
    check_digit_ids,
    check_ignore_index,
    check_logits,
    check_method,
    check_number_values,
    check_reduction,
    check_squash_factor,
    check_targets,
    check_weights,
    kernel_vector,
    use_triton,
)
from .launch import launch
from .reference import METHODS, ntl_loss_reference, squash_parameters

METHOD_CODES = {name: code for code, name in enumerate(METHODS)}  # nll=0, confidence=1, was=2, mse=3
FORWARD_BLOCK_ROWS = 128  # rows a forward program reads at K <= 16 (16 lanes each); larger K: as many lanes in all
REDUCE_TILE = 1024  # partials the last forward program adds per step, as [groups, partials per group]
PARTIAL_TILES = (2, 16, 128, 1024)  # partials-per-group widths of that tile (few shapes: few compiled variants)

# ``method`` is a runtime argument of every kernel (a uniform branch): one compiled binary serves the four methods.
# The number-token set's size K (NUM_TOKENS), its lanes (BLOCK_K) and its options (HAS_VALUES, HAS_WEIGHTS, SQUASH)
# are constexprs: the 10 digits without options compile the 16-lane code they always did; every other set is its
# own variant (one per tokenizer and option set).


def number_block(num_tokens: int) -> int:
    """BLOCK_K, the lanes of a row's number-token vector: the next power of two >= K, at least 16 (K = 10: 16)."""
    return max(16, triton.next_power_of_2(num_tokens))


@triton.jit
def digit_log_softmax(z):
    """log_softmax over the last axis of number-token logits ``z [..., BLOCK_K]`` (padding lanes hold -inf)."""
    shifted = z - tl.max(z, axis=-1, keep_dims=True)
    return shifted - tl.log(tl.sum(tl.exp(shifted), axis=-1, keep_dims=True))


@triton.jit
def token_values(values_ptr, slots, NUM_TOKENS: tl.constexpr, HAS_VALUES: tl.constexpr):
    """The set's values ``[BLOCK_K]`` at ``slots`` (0 in the padding lanes): loaded, or the slot itself (digits)."""
    if HAS_VALUES:
        values = tl.load(values_ptr + slots, mask=slots < NUM_TOKENS, other=0.0)
    else:
        values = slots.to(tl.float32)
    return values


@triton.jit
def target_values(values_ptr, y, HAS_VALUES: tl.constexpr):
    """The value of the target slot ``y`` (``[..., 1]`` or a scalar, always a slot in range)."""
    if HAS_VALUES:
        value = tl.load(values_ptr + y)
    else:
        value = y.to(tl.float32)
    return value


@triton.jit
def value_distance(values, target_value, squash_ptr, SQUASH: tl.constexpr):
    """was's dist(v_k, v_y) ``[..., BLOCK_K]``: |v_k - v_y|, or squashed (``squash_parameters`` at ``squash_ptr``:
    0 where equal, else 1 + (|v_k - v_y| - dmin) * slope)."""
    distance = tl.abs(values - target_value)
    if SQUASH:
        smallest = tl.load(squash_ptr)
        slope = tl.load(squash_ptr + 1)
        distance = tl.where(distance == 0.0, 0.0, 1.0 + (distance - smallest) * slope)
    return distance


@triton.jit
def method_quantity(log_p, slots, y, values, y_value, squash_ptr, SQUASH: tl.constexpr, method):
    """The per-position quantity ``q [..., 1]`` of number-token log-probs ``log_p [..., BLOCK_K]`` and target slots
    ``y [..., 1]`` (or a scalar) of value ``y_value``: -log p_y (nll), p_y (confidence), sum p_k dist(v_k, v_y)
    (was), (sum p_k v_k - v_y)^2 (mse); ``values [BLOCK_K]`` the set's values."""
    p = tl.exp(log_p)
    is_target = slots == y
    if method == 0:
        q = -tl.sum(tl.where(is_target, log_p, 0.0), axis=-1, keep_dims=True)
    elif method == 1:
        q = tl.sum(tl.where(is_target, p, 0.0), axis=-1, keep_dims=True)
    elif method == 2:
        q = tl.sum(p * value_distance(values, y_value, squash_ptr, SQUASH), axis=-1, keep_dims=True)
    else:
        error = tl.sum(p * values, axis=-1, keep_dims=True) - y_value
        q = error * error
    return q


@triton.jit
def method_quantity_grad(log_p, slots, y, q, values, y_value, squash_ptr, SQUASH: tl.constexpr, method):
    """dq/dz ``[..., BLOCK_K]`` for the number-token logits z (module docstring); zero in the padding lanes."""
    p = tl.exp(log_p)
    is_target = (slots == y).to(tl.float32)
    if method == 0:
        grad = p - is_target
    elif method == 1:
        grad = q * (is_target - p)
    elif method == 2:
        grad = p * (value_distance(values, y_value, squash_ptr, SQUASH) - q)
    else:
        expected_value = tl.sum(p * values, axis=-1, keep_dims=True)
        grad = 2.0 * (expected_value - y_value) * p * (values - expected_value)
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
def assert_digit_ids(digit_ids, vocab_size, NUM_TOKENS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Device-side check of the K number-token ids ``[BLOCK_K]`` (padding lanes ignored): in [0, V), and distinct
    for K <= 16 (a larger set is checked for duplicates by ``checks.check_digit_ids``, asynchronously).

    Compiled in only for launches with ``debug=True`` (the CUDA path); CPU inputs are checked on the host instead.
    """
    slots = tl.arange(0, BLOCK_K)
    is_token = slots < NUM_TOKENS
    tl.device_assert(~is_token | ((digit_ids >= 0) & (digit_ids < vocab_size)), "digit_ids must lie in [0, V)")
    if BLOCK_K <= 16:
        same = (digit_ids[:, None] == digit_ids[None, :]) & is_token[None, :]
        tl.device_assert(~is_token | (tl.sum(same.to(tl.int32), axis=1) == 1), "digit_ids must be distinct ids")


@triton.jit
def _rows_digit_quantity(
    logits_ptr, row, n_rows, inner_size, stride_outer, stride_inner, stride_vocab,
    digit_ids_ptr, targets_ptr, values_ptr, weights_ptr, squash_ptr, ignore_index, method,
    NUM_TOKENS: tl.constexpr, BLOCK_K: tl.constexpr, HAS_VALUES: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    SQUASH: tl.constexpr,
):
    """For rows ``row [R]``: number-token log-probs [R, BLOCK_K], targets y [R, 1] and their values [R, 1], the
    set's values [BLOCK_K], validity [R] (a target), counted [R] (a target of weight > 0), weights [R] (1 without)
    and the unweighted quantity q [R, 1] (0 where not counted)."""
    slots = tl.arange(0, BLOCK_K)
    slot_mask = slots < NUM_TOKENS
    digit_ids = tl.load(digit_ids_ptr + slots, mask=slot_mask, other=0).to(tl.int64)
    row_mask = row < n_rows
    row64 = row.to(tl.int64)
    row_offset = (row64 // inner_size) * stride_outer + (row64 % inner_size) * stride_inner
    offsets = row_offset[:, None] + digit_ids[None, :] * stride_vocab
    z = tl.load(logits_ptr + offsets, mask=row_mask[:, None] & slot_mask[None, :], other=0.0).to(tl.float32)
    log_p = digit_log_softmax(tl.where(slot_mask[None, :], z, float("-inf")))
    target = tl.load(targets_ptr + row64, mask=row_mask, other=ignore_index).to(tl.int32)
    tl.device_assert(
        (target == ignore_index) | ((target >= 0) & (target < NUM_TOKENS)),
        "targets must be number-token slots 0..K-1 (digit values 0..9) or ignore_index",
    )
    valid = row_mask & (target != ignore_index)
    weight = tl.full(valid.shape, 1.0, tl.float32)
    counted = valid
    if HAS_WEIGHTS:
        weight = tl.load(weights_ptr + row64, mask=valid, other=0.0)
        counted = valid & (weight > 0)
    y = tl.where(counted, target, 0)[:, None]
    values = token_values(values_ptr, slots, NUM_TOKENS, HAS_VALUES)
    y_value = target_values(values_ptr, y, HAS_VALUES)
    q = method_quantity(log_p, slots, y, values, y_value, squash_ptr, SQUASH, method)
    q = tl.where(counted[:, None], q, 0.0)
    return log_p, y, values, y_value, valid, counted, weight, q


@triton.jit
def _store_groups(loss_ptr, quantity_sum_ptr, count_ptr, weight_sum_ptr, groups, quantity_sum, count, weight_sum,
                  loss_factor, mask, method, HAS_WEIGHTS: tl.constexpr):
    """Finish groups from their quantity sums and counts (float), weighted: from their (weighted) quantity sums and
    weight sums, the loss times ``loss_factor`` (the row's weight for ``"none"``). Stores the loss (0 for a group
    without digits, or of weight 0), the sums and the int64 count."""
    if HAS_WEIGHTS:
        has_digits = weight_sum > 0
        loss = finish_group(quantity_sum / tl.where(has_digits, weight_sum, 1.0), method) * loss_factor
        tl.store(weight_sum_ptr + groups, weight_sum, mask=mask)
    else:
        has_digits = count > 0
        loss = finish_group(quantity_sum / tl.maximum(count, 1.0), method)
    tl.store(loss_ptr + groups, tl.where(has_digits, loss, 0.0), mask=mask)
    tl.store(quantity_sum_ptr + groups, quantity_sum, mask=mask)
    tl.store(count_ptr + groups, count.to(tl.int64), mask=mask)


# Sizes, strides and flags are not specialised (no recompile per batch shape): only stride_vocab (== 1) matters
# for these gathers of K scattered columns; the backward also keeps vocab_size (the 16-byte alignment of its rows).
@triton.jit(do_not_specialize=["n_rows", "group_size", "n_groups", "vocab_size", "inner_size", "stride_outer",
                               "stride_inner", "ignore_index", "method"])
def _ntl_forward_kernel(
    logits_ptr, targets_ptr, digit_ids_ptr, values_ptr, weights_ptr, squash_ptr,
    loss_ptr, quantity_sum_ptr, count_ptr, weight_sum_ptr, partial_ptr, ticket_ptr,
    n_rows, group_size, n_groups, vocab_size, inner_size, stride_outer, stride_inner, stride_vocab, ignore_index,
    method,
    PER_ROW: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_GROUPS: tl.constexpr, BLOCK_PARTIALS: tl.constexpr,
    NUM_TOKENS: tl.constexpr, BLOCK_K: tl.constexpr, HAS_VALUES: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    SQUASH: tl.constexpr,
):
    group = tl.program_id(0)
    block = tl.program_id(1)
    slots = tl.arange(0, BLOCK_K)
    assert_digit_ids(tl.load(digit_ids_ptr + slots, mask=slots < NUM_TOKENS, other=-1), vocab_size, NUM_TOKENS,
                     BLOCK_K)
    local = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row = group * group_size + local
    row = tl.where(local < group_size, row, n_rows)  # rows past the group's end are masked like rows past the last
    _, _, _, _, valid, counted, weight, q = _rows_digit_quantity(
        logits_ptr, row, n_rows, inner_size, stride_outer, stride_inner, stride_vocab,
        digit_ids_ptr, targets_ptr, values_ptr, weights_ptr, squash_ptr, ignore_index, method,
        NUM_TOKENS, BLOCK_K, HAS_VALUES, HAS_WEIGHTS, SQUASH,
    )
    q = tl.sum(q, axis=1)
    # Weighted, a row's weight of the group mean (its weight where it counts); "none" weighs its loss instead.
    row_weight = tl.where(counted, weight, 0.0)
    if PER_ROW:  # reduction "none": every row is its own group, finish it here
        _store_groups(loss_ptr, quantity_sum_ptr, count_ptr, weight_sum_ptr, row, q, valid.to(tl.float32),
                      counted.to(tl.float32), weight, row < n_rows, method, HAS_WEIGHTS)
    else:
        if HAS_WEIGHTS:
            q = q * row_weight
        quantity_sum = tl.sum(q, axis=0)
        count = tl.sum(valid.to(tl.float32), axis=0)
        weight_sum = tl.sum(row_weight, axis=0)
        blocks_per_group = tl.num_programs(1)
        if blocks_per_group == 1:  # the group fits this block
            _store_groups(loss_ptr, quantity_sum_ptr, count_ptr, weight_sum_ptr, group, quantity_sum, count,
                          weight_sum, 1.0, True, method, HAS_WEIGHTS)
        else:
            width = 2 + HAS_WEIGHTS  # (quantity sum, count[, weight sum]) per partial
            partial = partial_ptr + (group * blocks_per_group + block) * width
            tl.store(partial, quantity_sum)
            tl.store(partial + 1, count)
            if HAS_WEIGHTS:
                tl.store(partial + 2, weight_sum)
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
                    weight_tile = tl.zeros([BLOCK_GROUPS, BLOCK_PARTIALS], dtype=tl.float32)
                    for block_start in range(0, blocks_per_group, BLOCK_PARTIALS):
                        blocks = block_start + tl.arange(0, BLOCK_PARTIALS)
                        at = partial_ptr + (groups[:, None] * blocks_per_group + blocks[None, :]) * width
                        mask = group_mask[:, None] & (blocks < blocks_per_group)[None, :]
                        quantity_tile += tl.load(at, mask=mask, other=0.0, volatile=True)
                        count_tile += tl.load(at + 1, mask=mask, other=0.0, volatile=True)
                        if HAS_WEIGHTS:
                            weight_tile += tl.load(at + 2, mask=mask, other=0.0, volatile=True)
                    _store_groups(
                        loss_ptr, quantity_sum_ptr, count_ptr, weight_sum_ptr, groups,
                        tl.sum(quantity_tile, axis=1), tl.sum(count_tile, axis=1), tl.sum(weight_tile, axis=1),
                        1.0, group_mask, method, HAS_WEIGHTS,
                    )


@triton.jit(do_not_specialize=["n_rows", "group_size", "inner_size", "stride_outer", "stride_inner", "ignore_index",
                               "method"])
def _ntl_backward_kernel(
    grad_logits_ptr, grad_loss_ptr, quantity_sum_ptr, count_ptr, weight_sum_ptr,
    logits_ptr, targets_ptr, digit_ids_ptr, values_ptr, weights_ptr, squash_ptr,
    n_rows, vocab_size, group_size, inner_size, stride_outer, stride_inner, stride_vocab, ignore_index, method,
    BLOCK_ROWS: tl.constexpr, BLOCK_VOCAB: tl.constexpr,
    NUM_TOKENS: tl.constexpr, BLOCK_K: tl.constexpr, HAS_VALUES: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    SQUASH: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = row < n_rows
    block_start = tl.program_id(1) * BLOCK_VOCAB
    cols = block_start + tl.arange(0, BLOCK_VOCAB)
    grad_row = grad_logits_ptr + row.to(tl.int64)[:, None] * vocab_size
    # The whole block gets zeros first (one mask per row: full-width vector stores), number-token columns included ...
    zeros = tl.zeros([BLOCK_ROWS, BLOCK_VOCAB], dtype=grad_logits_ptr.dtype.element_ty)
    tl.store(grad_row + cols[None, :], zeros, mask=row_mask[:, None] & (cols < vocab_size)[None, :])

    slots = tl.arange(0, BLOCK_K)
    digit_ids = tl.load(digit_ids_ptr + slots, mask=slots < NUM_TOKENS, other=-1).to(tl.int64)
    owns_digits = (digit_ids >= block_start) & (digit_ids < block_start + BLOCK_VOCAB)
    if tl.max(owns_digits.to(tl.int32), axis=0) > 0:
        log_p, y, values, y_value, valid, counted, weight, q = _rows_digit_quantity(
            logits_ptr, row, n_rows, inner_size, stride_outer, stride_inner, stride_vocab,
            digit_ids_ptr, targets_ptr, values_ptr, weights_ptr, squash_ptr, ignore_index, method,
            NUM_TOKENS, BLOCK_K, HAS_VALUES, HAS_WEIGHTS, SQUASH,
        )
        group = row // group_size
        upstream = tl.load(grad_loss_ptr + group, mask=row_mask, other=0.0)
        count = tl.load(count_ptr + group, mask=row_mask, other=0).to(tl.float32)
        if HAS_WEIGHTS:
            # dL/dq_row = f'(mean) w_row / W with W the group's weight sum (1 for "none", whose loss is w f(q))
            weight_sum = tl.load(weight_sum_ptr + group, mask=row_mask, other=0.0)
            denominator = tl.where(weight_sum > 0, weight_sum, 1.0)
            mean = tl.load(quantity_sum_ptr + group, mask=row_mask, other=0.0) / denominator
            scale = upstream * weight / denominator * finish_group_slope(mean, method)
        else:
            mean = tl.load(quantity_sum_ptr + group, mask=row_mask, other=0.0) / tl.maximum(count, 1.0)
            scale = upstream / tl.maximum(count, 1.0) * finish_group_slope(mean, method)
        # Selected, not scaled by 0: a row that does not count gets exactly 0 even if its logits are NaN or inf.
        grad = method_quantity_grad(log_p, slots, y, q, values, y_value, squash_ptr, SQUASH, method)
        grad = tl.where(counted[:, None], scale[:, None] * grad, 0.0)
        grad = grad.to(grad_logits_ptr.dtype.element_ty)
        # ... then the number-token columns get their gradient. Other threads of this program zeroed some of them:
        # the barrier orders those stores before these.
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
    """What the kernels need to address the number-token logits without copying ``logits``.

    The rare leading layouts that two strides cannot express gather the K number-token columns first (a [..., K]
    copy, never the full vocabulary) and address those.
    """
    layout = _row_layout(logits)
    if layout is None:
        logits = logits.index_select(-1, digit_ids).contiguous()
        digit_ids = torch.arange(len(digit_ids), device=logits.device)
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


class NumberTokenSet(NamedTuple):
    """What the kernels read about the number-token set and its options, as launch arguments and constexprs."""

    values: Optional[torch.Tensor]  # [K] float32, or None (the slots are the values: the digits)
    squash: Optional[torch.Tensor]  # [2] float32 squash_parameters, or None
    weights: Optional[torch.Tensor]  # [N] float32 per row, or None

    @staticmethod
    def of(digit_ids, number_values, squash_factor, weights) -> "NumberTokenSet":
        values = kernel_vector(number_values, torch.float32) if number_values is not None else None
        squash = None
        if squash_factor is not None:
            slots = torch.arange(len(digit_ids), device=digit_ids.device, dtype=torch.float32)
            squash = squash_parameters(values if values is not None else slots, squash_factor)
        return NumberTokenSet(values, squash, kernel_vector(weights, torch.float32) if weights is not None else None)

    def arguments(self, placeholder: torch.Tensor) -> tuple:
        """(values, weights, squash) pointers (``placeholder``, a float32 tensor, where absent: never read)."""
        return tuple(t if t is not None else placeholder for t in (self.values, self.weights, self.squash))

    def constexprs(self, num_tokens: int) -> dict:
        return dict(NUM_TOKENS=num_tokens, BLOCK_K=number_block(num_tokens), HAS_VALUES=self.values is not None,
                    HAS_WEIGHTS=self.weights is not None, SQUASH=self.squash is not None)


def _ntl_forward(logits, row_targets, digit_ids, number_set, method, reduction, groups, ignore_index):
    """Launch the forward over ``row_targets`` (``kernel_vector`` of the targets) in ``groups`` (``_groups``)."""
    kernel_logits, kernel_digit_ids, (inner_size, stride_outer, stride_inner) = _launch_layout(logits, digit_ids)
    n_rows = row_targets.numel()
    n_groups, group_size = groups
    device = logits.device
    loss = torch.empty(n_groups, device=device, dtype=torch.float32)
    quantity_sum = torch.empty(n_groups, device=device, dtype=torch.float32)
    count = torch.empty(n_groups, device=device, dtype=torch.int64)
    weight_sum = torch.empty(n_groups, device=device, dtype=torch.float32) if number_set.weights is not None else loss
    if n_groups == 0:
        return loss, quantity_sum, count, weight_sum
    if group_size == 0:  # "sample" over an empty second dimension: groups without positions
        return loss.zero_(), quantity_sum.zero_(), count.zero_(), weight_sum.zero_()
    per_row = reduction == "none"
    constexprs = number_set.constexprs(len(digit_ids))
    # As many lanes per program at any K as 128 rows of 16 lanes (one row of 2,048 lanes for Llama-3's K = 1,110)
    block_rows = max(1, FORWARD_BLOCK_ROWS * 16 // constexprs["BLOCK_K"])
    blocks_per_group = triton.cdiv(n_rows if per_row else group_size, block_rows)
    partials_per_group = 1 if per_row else blocks_per_group
    # The last program adds the partials [groups, blocks] in tiles of REDUCE_TILE; one tile shape per power of 8.
    block_partials = next(p for p in PARTIAL_TILES if p >= min(partials_per_group, REDUCE_TILE))
    if partials_per_group > 1:
        width = 3 if number_set.weights is not None else 2
        partial = torch.empty(n_groups * partials_per_group * width, device=device, dtype=torch.float32)
        ticket = torch.zeros(1, device=device, dtype=torch.int32)
    else:  # every group is finished by its own program: partials and ticket unused (same types: same variant)
        partial, ticket = loss, torch.empty(1, device=device, dtype=torch.int32)
    launch(
        _ntl_forward_kernel, (1 if per_row else n_groups, blocks_per_group),
        kernel_logits, row_targets, kernel_digit_ids, *number_set.arguments(loss),
        loss, quantity_sum, count, weight_sum, partial, ticket,
        n_rows, n_rows if per_row else group_size, n_groups, kernel_logits.shape[-1], inner_size, stride_outer,
        stride_inner, kernel_logits.stride(-1), ignore_index, METHOD_CODES[method],
        PER_ROW=per_row, BLOCK_ROWS=block_rows, BLOCK_GROUPS=REDUCE_TILE // block_partials,
        BLOCK_PARTIALS=block_partials, **constexprs, **kernel_options(logits),
    )
    return loss, quantity_sum, count, weight_sum


def _backward_blocks(vocab_size: int, block_k: int) -> tuple[int, int]:
    """(rows, columns) of a backward program: rows of the 10 gathered digit columns (``V <= 16``: the hidden-state
    path, un-addressable layouts) in tall blocks, vocabulary rows in blocks of up to 8192 columns. A program is
    mostly zero-fill stores after ~250 instructions of set-up (row, digit-id and ownership logic): 4 x 8192 gives
    each of its 128 threads 256 elements to spread that over (1.5 SASS instructions per element as launched, against
    4.9 at 4 x 2048) at 30 registers, 100% occupancy, 128-bit stores (bench/results/gpu_static_report.md). A shorter
    vocabulary gets the next power of two, so no program is mostly masked off. A number-token set of more than 16
    lanes (``block_k``) takes fewer rows, so a program's [rows, BLOCK_K] number-token tile stays 64 lanes."""
    if vocab_size <= 16:
        return 64, 16
    return max(1, 64 // block_k), min(8192, triton.next_power_of_2(vocab_size))


def _ntl_backward(grad_loss, quantity_sum, count, weight_sum, logits, row_targets, digit_ids, number_set, method,
                  group_size, ignore_index):
    vocab_size = logits.shape[-1]
    grad_logits = torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)
    n_rows = row_targets.numel()
    if n_rows == 0:
        return grad_logits
    kernel_logits, kernel_digit_ids, (inner_size, stride_outer, stride_inner) = _launch_layout(logits, digit_ids)
    if kernel_logits is not logits:
        # The number-token columns were gathered; scatter the gradient to their real positions in the vocabulary.
        grad_digits = _ntl_backward(
            grad_loss, quantity_sum, count, weight_sum, kernel_logits, row_targets, kernel_digit_ids, number_set,
            method, group_size, ignore_index,
        )
        return grad_logits.zero_().index_copy_(-1, digit_ids, grad_digits)
    constexprs = number_set.constexprs(len(digit_ids))
    block_rows, block_vocab = _backward_blocks(vocab_size, constexprs["BLOCK_K"])
    launch(
        _ntl_backward_kernel, (triton.cdiv(n_rows, block_rows), triton.cdiv(vocab_size, block_vocab)),
        grad_logits, grad_loss.float().contiguous(), quantity_sum, count, weight_sum,
        kernel_logits, row_targets, kernel_digit_ids, *number_set.arguments(quantity_sum),
        n_rows, vocab_size, group_size, inner_size, stride_outer, stride_inner, kernel_logits.stride(-1),
        ignore_index, METHOD_CODES[method],
        BLOCK_ROWS=block_rows, BLOCK_VOCAB=block_vocab, **constexprs, **kernel_options(logits),
    )
    return grad_logits


class _NTLLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, digit_ids, method, reduction, ignore_index, number_set):
        # The kernels read targets and digit ids as contiguous vectors, whatever view the caller passed.
        groups = _groups(targets, reduction)
        row_targets, digit_ids = kernel_vector(targets), kernel_vector(digit_ids, torch.long)
        loss, quantity_sum, count, weight_sum = _ntl_forward(
            logits, row_targets, digit_ids, number_set, method, reduction, groups, ignore_index
        )
        ctx.save_for_backward(logits, row_targets, digit_ids, quantity_sum, count, weight_sum, *number_set)
        ctx.options = (method, groups[1], ignore_index)
        ctx.mark_non_differentiable(count)
        return loss, count

    @staticmethod
    def backward(ctx, grad_loss, grad_count):
        logits, row_targets, digit_ids, quantity_sum, count, weight_sum = ctx.saved_tensors[:6]
        number_set = NumberTokenSet(*ctx.saved_tensors[6:])
        method, group_size, ignore_index = ctx.options
        grad_logits = _ntl_backward(
            grad_loss.reshape(-1), quantity_sum, count, weight_sum, logits, row_targets, digit_ids, number_set,
            method, group_size, ignore_index,
        )
        return grad_logits, None, None, None, None, None, None


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
    number_values: torch.Tensor | None = None,
    squash_factor: float | None = None,
    weights: torch.Tensor | None = None,
):
    """Number Token Loss over the K number-token logits of vocabulary-sized logits (K = 10: the digits).

    Args:
        logits: ``[..., V]`` float32/bfloat16/float16 (float64 on the reference path), any leading shape and
            strides (views of [B, T, V], every other row, a sliced vocabulary) — never copied whole.
        targets: ``[...]`` (the logits' shape without V) integer slots 0..K-1 of the number-token set (the digit
            values 0..9 for the 10 digits), or ``ignore_index``. ``digit_targets`` turns label token ids into this
            form.
        digit_ids: K distinct token ids in [0, V), 1 <= K <= 2048; entry k is the token of slot k (the 10 digits:
            entry i is the token of digit i, ``digit_token_ids``).
        method: ``"nll"`` (-log p[y]), ``"confidence"`` (-log of the group's mean p[y], floored at 1e-8),
            ``"was"`` (sum_k p_k dist(v_k, v_y)) or ``"mse"`` ((v_y - sum_k p_k v_k)^2); p = softmax over the K
            number-token logits (``reference.py`` states the math).
        reduction: ``"none"`` -> ``targets.shape``; ``"sample"`` -> ``[targets.shape[0]]`` (mean over the valid
            positions of each entry of the first dimension); ``"mean"`` -> ``[]`` over all valid positions.
        ignore_index: the target of positions that do not count; an int that fits in int32.
        return_counts: also return the number of valid positions behind each loss entry (0 means "no digits",
            whose loss is 0 with zero gradient, not "perfect").
        number_values: ``[K]`` finite values of the tokens (None: 0..K-1, the digits). Llama-3's '7', '07' and
            '007' are three slots of value 7: nll/confidence score the slot, was/mse the value.
        squash_factor: None (was uses |v_k - v_y|), or a number > 1: was's distances as ntloss's
            ``squash_factor`` (the closest wrong value costs 1, the farthest ``squash_factor``; for sets of large
            values). mse is not squashed.
        weights: ``[...]`` (the targets' shape) finite weights >= 0, not differentiated: every group mean becomes
            the weighted mean sum(w q) / sum(w) over its valid positions (0 if that sum is 0), and ``"none"`` gives
            ``w * loss`` (ntloss's ``loss_weights``). A position of weight 0 is not read (as an ignored one).
    Returns:
        float32 loss (float64 for float64 logits), or ``NTLOutput(loss, counts)`` with int64 counts.
        The gradient w.r.t. ``logits`` is dense in ``logits``' dtype and zero outside the number-token columns.

    Non-finite logits: only the K number-token columns of valid positions are read. A NaN or +inf there gives a NaN
    loss for its group (its position with ``"none"``) and a NaN gradient in that row only (the group's other rows
    keep finite gradients: zero for ``"confidence"``); other groups are unaffected. Ignored positions,
    groups without digits and other columns get exactly zero gradient whatever they hold. A -inf number-token
    logit is a token of probability 0 (an infinite nll if it is the target).

    CUDA tensors run the Triton kernels without a host sync: out-of-range targets or digit ids (and non-finite
    number values or weights) stop the kernel with a device-side assert (reported at the next synchronisation, as
    ``cross_entropy`` does). CPU tensors run ``ntl_loss_reference`` (the same numbers), or the Triton kernels under
    ``TRITON_INTERPRET=1``; their values are checked on the host (ValueError).
    """
    check_logits(logits)
    ignore_index = check_ignore_index(ignore_index)
    digit_ids = check_digit_ids(digit_ids, logits.shape[-1], logits.device)
    check_targets(targets, logits.shape[:-1], logits.device, ignore_index, len(digit_ids))
    check_method(method)
    check_reduction(reduction, targets)
    number_values = check_number_values(number_values, len(digit_ids), logits.device)
    squash_factor = check_squash_factor(squash_factor)
    weights = check_weights(weights, targets.shape, logits.device)
    options = dict(number_values=number_values, squash_factor=squash_factor, weights=weights)
    if use_triton(logits) and logits.dtype != torch.float64:
        number_set = NumberTokenSet.of(digit_ids, number_values, squash_factor, weights)
        loss, counts = _NTLLossFunction.apply(logits, targets, digit_ids, method, reduction, ignore_index, number_set)
        shape = targets.shape if reduction == "none" else targets.shape[:1] if reduction == "sample" else ()
        loss, counts = loss.reshape(shape), counts.reshape(shape)
    else:
        loss, counts = ntl_loss_reference(logits, targets, digit_ids, method, reduction, ignore_index, **options)
    return NTLOutput(loss, counts) if return_counts else loss

