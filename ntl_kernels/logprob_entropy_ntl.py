"""Everything the PPO actor reads from the logits, in one pass: target log-prob, entropy, number-token log-probs and
NTL.

Read top to bottom: the Triton helpers, the forward kernel, the backward kernel, the host functions, the autograd
Function, the pure-torch reference and the public ``fused_logprob_entropy_ntl``.

Notation for one row (one token position): ``l`` its V logits, ``T`` its temperature, ``x = l / T`` (verl divides
the logits by the sampling temperature before its log-prob and entropy), ``y`` its label, ``z`` the K number-token
entries of ``x`` (the 10 digits, or e.g. Llama-3's 1,110 tokens '0'..'999'), ``r`` its target slot (0..K-1 or
ignored), ``v`` the set's values, ``w`` its weight (1 without weights). The forward keeps, over blocks of the row,

    m = max_j x_j,   s = sum_j e^(x_j - m),   t = sum_j (x_j - m) e^(x_j - m)

updated online: when the running max moves from m to m', s <- e^(m - m') s and t <- e^(m - m') (t + (m - m') s).
Keeping ``t`` relative to the max (not sum x e^x) avoids cancelling two huge numbers on rows of large magnitude.
Then, with p = softmax(x) and mu = E_p[x] - m = t / s,

    log_prob = x_y - m - log s
    entropy  = log sum e^x - E_p[x] = log s - t / s
    digit_log_probs = log_softmax(z)          (the same temperature: the digits are scored as they were sampled)
    ntl      = the per-position value of ``ntl_loss(x, r, digit_ids, method, reduction="none", ...)``: w * loss

Backward, for upstream gradients g_lp, g_ent, g_dlp [K], g_ntl of one row (any may be absent), w.r.t. x_j:

    d log_prob / dx_j = 1[j = y] - p_j
    d entropy  / dx_j = -p_j (x_j - E_p[x])                      (d/dx_j of log s - sum_i p_i x_i)
    d dlp_k    / dz_i = 1[i = k] - p^d_i    ->  sum_k g_dlp_k (...) = g_dlp_i - p^d_i sum_k g_dlp_k
    d ntl      / dz_i = w times the n = 1 case of ntl_loss.py's header   (p^d = softmax(z)):
        nll, and confidence when p^d_r >= 1e-8:  p^d_i - 1[i = r]   (confidence = -log p^d_r; 0 below the floor)
        was:  p^d_i (dist_i - q)  (q the unweighted loss)     mse:  2 (mu_d - v_r) p^d_i (v_i - mu_d),
        mu_d = sum_k p^d_k v_k

and d/dl_j = (1/T) d/dx_j. Every column gets the p_j terms; the label's column adds g_lp, the K number-token columns
add the last two. One kernel writes that dense gradient once, optionally into the logits' own buffer.

The kernels compute e^u as exp2(u log2 e) (one MUFU.EX2 instruction, flush-to-zero) and keep the running sums
per lane, so the forward costs one cross-thread reduction (the block max) per vocabulary block.
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
    check_squash_factor,
    check_targets,
    check_weights,
    host_checks_values,
    kernel_vector,
    use_triton,
)
from .launch import launch
from .ntl_loss import (
    METHOD_CODES,
    NumberTokenSet,
    _row_layout,
    assert_digit_ids,
    digit_log_softmax,
    finish_group,
    finish_group_slope,
    kernel_options,
    method_quantity,
    method_quantity_grad,
    number_block,
    target_values,
    token_values,
)
from .reference import compute_dtype, ntl_loss_reference

# Vocabulary block sizes: a forward program streams its row in FORWARD_BLOCK_VOCAB chunks; the backward runs one
# program per (row, BACKWARD_CHUNKS x BACKWARD_BLOCK_VOCAB columns), looping over its BACKWARD_BLOCK_VOCAB chunks.
# Chosen from the compiled code (bench/results/gpu_static_report.md): the forward's 16 warps over 8,192 columns keep
# 16 elements (two 128-bit bf16 loads) per thread at 64 registers (50% occupancy) and one max reduction per chunk;
# the backward's 4 warps over 4,096-column chunks keep 32 elements (four 128-bit loads) per thread per chunk at 40
# registers (75% occupancy), and its per-program set-up (row loads, the digit/label columns) runs once per 4 chunks.
# Module constants, so the CPU tests can shrink them and exercise the multi-block paths at small V.
FORWARD_BLOCK_VOCAB = 8192
FORWARD_WARPS = 16
BACKWARD_BLOCK_VOCAB = 4096
BACKWARD_WARPS = 4
BACKWARD_CHUNKS = 4
BACKWARD_CHUNKS_MANY_TOKENS = 64  # a number-token set of more than 15 tokens: one backward program per row
TEMPERATURE_FLOOR = 1e-8  # verl clamps the temperature at this before dividing
LOG2_E = tl.constexpr(1.4426950408889634)
SHIFT_FLOOR = tl.constexpr(-256.0)  # log2 of a weight that is exactly 0 in float32: e^(x - m) at x = -inf, no inf * 0
# A NaN logit (or +inf, whose x - m is NaN) must stay NaN through that floor: the GPU's default max returns the
# other operand (the interpreter's numpy max does not), which would score a NaN logit as a -inf one.
KEEP_NAN = tl.constexpr(tl.PropagateNan.ALL)


@triton.jit
def _row_digit_log_probs(row_ptr, stride_vocab, digit_ids, inv_temperature, NUM_TOKENS: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """log_softmax over the K tempered number-token logits of one row, as a [BLOCK_K] vector (-inf in the padding
    lanes)."""
    is_token = tl.arange(0, BLOCK_K) < NUM_TOKENS
    z = tl.load(row_ptr + digit_ids * stride_vocab, mask=is_token, other=0.0).to(tl.float32) * inv_temperature
    return digit_log_softmax(tl.where(is_token, z, float("-inf")))


@triton.jit
def _ntl_value(log_p, slots, target, values_ptr, squash_ptr, method, NUM_TOKENS: tl.constexpr,
               HAS_VALUES: tl.constexpr, SQUASH: tl.constexpr):
    """Per-position NTL of one row (a group of one position, unweighted) from its number-token log-probs
    [BLOCK_K] at ``slots`` and its target slot."""
    values = token_values(values_ptr, slots, NUM_TOKENS, HAS_VALUES)
    target_value = target_values(values_ptr, target, HAS_VALUES)
    quantity = method_quantity(log_p, slots, target, values, target_value, squash_ptr, SQUASH, method)
    return tl.sum(finish_group(quantity, method), axis=0)


@triton.jit
def _ntl_value_grad(log_p, slots, target, values_ptr, squash_ptr, method, NUM_TOKENS: tl.constexpr,
                    HAS_VALUES: tl.constexpr, SQUASH: tl.constexpr):
    """d ntl / d z for one row, [lanes] (zero in the padding lanes): the chain rule through ``finish_group``."""
    values = token_values(values_ptr, slots, NUM_TOKENS, HAS_VALUES)
    target_value = target_values(values_ptr, target, HAS_VALUES)
    quantity = method_quantity(log_p, slots, target, values, target_value, squash_ptr, SQUASH, method)
    grad = method_quantity_grad(log_p, slots, target, quantity, values, target_value, squash_ptr, SQUASH, method)
    return grad * finish_group_slope(quantity, method)


# Not specialised: the row index split (one division per program) and the per-launch flags. Strides are: their
# 16-divisibility tells the compiler that rows start 16-byte aligned, which 128-bit loads and stores need.
@triton.jit(do_not_specialize=["inner_size", "ignore_index", "method"])
def _forward_kernel(
    logits_ptr, labels_ptr, inv_temperature_ptr, digit_ids_ptr, ntl_targets_ptr, values_ptr, weights_ptr, squash_ptr,
    log_probs_ptr, entropy_ptr, digit_log_probs_ptr, ntl_ptr, row_max_ptr, log_sum_ptr,
    vocab_size, inner_size, stride_outer, stride_inner, stride_vocab, ignore_index, method,
    HAS_NTL: tl.constexpr, BLOCK_VOCAB: tl.constexpr,
    NUM_TOKENS: tl.constexpr, BLOCK_K: tl.constexpr, HAS_VALUES: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    SQUASH: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (row // inner_size) * stride_outer + (row % inner_size) * stride_inner
    inv_temperature = tl.load(inv_temperature_ptr + row)
    # The host turns a temperature <= 0 or NaN into a NaN inverse, and +inf into 0 (``_inverse_temperature``)
    tl.device_assert(inv_temperature > 0, "temperature must be positive and finite")
    cols = tl.arange(0, BLOCK_VOCAB)
    # The running max m is a scalar; the sums s = sum e^(x - m) and t = sum (x - m) e^(x - m) are kept per lane (in
    # log2 units for t) and rescaled only when a block raises m, so a block costs one cross-thread reduction (its
    # max). Starting m finite keeps (x - m) of a leading -inf block from being -inf - (-inf).
    row_max = -1.0e38
    sums = tl.zeros([BLOCK_VOCAB], dtype=tl.float32)
    moments = tl.zeros([BLOCK_VOCAB], dtype=tl.float32)
    for start in range(0, vocab_size, BLOCK_VOCAB):
        col = start + cols
        logit = tl.load(row_ptr + col.to(tl.int64) * stride_vocab, mask=col < vocab_size, other=float("-inf"))
        block_max = tl.max(logit, axis=0).to(tl.float32) * inv_temperature
        if block_max > row_max:
            shift = tl.maximum((row_max - block_max) * LOG2_E, SHIFT_FLOOR)
            rescale = tl.exp2(shift)
            moments = rescale * (moments + shift * sums)
            sums = rescale * sums
            row_max = block_max
        # x - m by one fused multiply-add (accurate for rows of any magnitude), then to log2 units for exp2
        shifted = tl.maximum((logit.to(tl.float32) * inv_temperature - row_max) * LOG2_E, SHIFT_FLOOR, KEEP_NAN)
        weight = tl.exp2(shifted)
        sums += weight
        moments += shifted * weight
    sum_exp = tl.sum(sums, axis=0)
    log_sum = tl.log(sum_exp)
    tl.store(entropy_ptr + row, log_sum - tl.sum(moments, axis=0) / (sum_exp * LOG2_E))
    tl.store(row_max_ptr + row, row_max)
    tl.store(log_sum_ptr + row, log_sum)

    label = tl.load(labels_ptr + row).to(tl.int64)
    has_label = label != ignore_index
    tl.device_assert(~has_label | ((label >= 0) & (label < vocab_size)), "labels must be token ids in [0, V)")
    x_label = tl.load(row_ptr + tl.where(has_label, label, 0) * stride_vocab, mask=has_label, other=0.0)
    x_label = x_label.to(tl.float32) * inv_temperature
    tl.store(log_probs_ptr + row, tl.where(has_label, x_label - row_max - log_sum, 0.0))

    slots = tl.arange(0, BLOCK_K)
    is_token = slots < NUM_TOKENS
    digit_ids = tl.load(digit_ids_ptr + slots, mask=is_token, other=-1).to(tl.int64)
    assert_digit_ids(digit_ids, vocab_size, NUM_TOKENS, BLOCK_K)
    log_p = _row_digit_log_probs(row_ptr, stride_vocab, digit_ids, inv_temperature, NUM_TOKENS, BLOCK_K)
    tl.store(digit_log_probs_ptr + row * NUM_TOKENS + slots, log_p, mask=is_token)
    if HAS_NTL:
        target = tl.load(ntl_targets_ptr + row).to(tl.int32)
        valid = target != ignore_index
        tl.device_assert(~valid | ((target >= 0) & (target < NUM_TOKENS)),
                         "ntl_targets must be number-token slots 0..K-1 (digit values 0..9)")
        if HAS_WEIGHTS:  # ntl = w * loss; a row of weight 0 counts as ignored
            weight = tl.load(weights_ptr + row)
            valid = valid & (weight > 0)
        value = _ntl_value(log_p, slots, tl.where(valid, target, 0), values_ptr, squash_ptr, method,
                           NUM_TOKENS, HAS_VALUES, SQUASH)
        if HAS_WEIGHTS:
            value = weight * value
        tl.store(ntl_ptr + row, tl.where(valid, value, 0.0))


@triton.jit
def _dense_grad(x, inv_temperature, row_max, log_sum, mean_shifted, grad_log_prob, grad_entropy, has_label,
                HAS_GRAD_LOG_PROB: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr):
    """d/dl of the log-prob and entropy terms, without the label's one-hot, at logits ``x`` (float32, untempered):
    p (a (x/T - m) + b) with a = -g_ent / T, b = (g_ent (E_p[x] - m) - g_lp) / T. The shift x/T - m is floored
    where p is exactly 0 anyway, so a -inf logit gives p = 0 and a finite factor (no 0 * inf). Without an entropy
    gradient a row whose label is ignored gets exactly 0 (selected, not p * 0: its p may be NaN)."""
    shifted = tl.maximum(x * inv_temperature - row_max, SHIFT_FLOOR, KEEP_NAN)
    p = tl.exp2((shifted - log_sum) * LOG2_E)
    offset = -grad_log_prob * inv_temperature
    if HAS_GRAD_ENTROPY:
        slope = -grad_entropy * inv_temperature
        return p * (slope * shifted + (offset - slope * mean_shifted))
    elif HAS_GRAD_LOG_PROB:
        return tl.where(has_label, p * offset, 0.0)
    else:
        return tl.zeros_like(x)


# Not specialised: the row index split and the per-launch flags (see _forward_kernel); the gradient's strides are.
@triton.jit(do_not_specialize=["inner_size", "ignore_index", "method", "has_grad_digits", "has_grad_ntl"])
def _backward_kernel(
    grad_logits_ptr, logits_ptr, labels_ptr, inv_temperature_ptr, digit_ids_ptr, ntl_targets_ptr,
    values_ptr, weights_ptr, squash_ptr,
    row_max_ptr, log_sum_ptr, entropy_ptr, digit_log_probs_ptr,
    grad_log_probs_ptr, grad_entropy_ptr, grad_digit_log_probs_ptr, grad_ntl_ptr,
    vocab_size, inner_size, stride_outer, stride_inner, stride_vocab,
    grad_stride_outer, grad_stride_inner, grad_stride_vocab, ignore_index, method, has_grad_digits, has_grad_ntl,
    HAS_GRAD_LOG_PROB: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr, BLOCK_VOCAB: tl.constexpr, CHUNKS: tl.constexpr,
    NUM_TOKENS: tl.constexpr, BLOCK_K: tl.constexpr, HAS_VALUES: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    SQUASH: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    block_start = tl.program_id(1) * (BLOCK_VOCAB * CHUNKS)
    block_end = tl.minimum(block_start + BLOCK_VOCAB * CHUNKS, vocab_size)
    outer, inner = row // inner_size, row % inner_size
    row_ptr = logits_ptr + outer * stride_outer + inner * stride_inner
    grad_row_ptr = grad_logits_ptr + outer * grad_stride_outer + inner * grad_stride_inner
    inv_temperature = tl.load(inv_temperature_ptr + row)
    row_max = tl.load(row_max_ptr + row)
    log_sum = tl.load(log_sum_ptr + row)
    mean_shifted = log_sum - tl.load(entropy_ptr + row)  # E_p[x] - m = log s - entropy
    label = tl.load(labels_ptr + row).to(tl.int32)
    has_label = label != ignore_index
    grad_log_prob = 0.0
    if HAS_GRAD_LOG_PROB:  # an ignored label has a constant log-prob of 0
        grad_log_prob = tl.where(has_label, tl.load(grad_log_probs_ptr + row), 0.0)
    grad_entropy = 0.0
    if HAS_GRAD_ENTROPY:
        grad_entropy = tl.load(grad_entropy_ptr + row)

    # Columns with more terms: lanes 0..K-1 the number tokens (their log-prob and NTL terms), lane K the label when
    # it is not one of them (its one-hot term); BLOCK_K >= K + 1 lanes (16 for the digits). Their gradient is
    # computed first, the program's chunks are stored next, then these columns over them, in the program that owns
    # them; barriers order the three steps across the program's threads (in place, their logits are read before a
    # chunk store overwrites them).
    lanes = tl.arange(0, BLOCK_K)
    is_token = lanes < NUM_TOKENS
    digit_ids = tl.load(digit_ids_ptr + lanes, mask=is_token, other=-1).to(tl.int32)
    if has_grad_digits + has_grad_ntl == 0:
        digit_ids = tl.full([BLOCK_K], -1, tl.int32)
    label_column = tl.where(has_label, label, -1)
    if HAS_GRAD_LOG_PROB:
        label_is_digit = tl.max((digit_ids == label_column).to(tl.int32), axis=0) > 0
        extra = tl.where(lanes == NUM_TOKENS, tl.where(label_is_digit, -1, label_column), digit_ids)
    else:
        extra = digit_ids
    owns = (extra >= block_start) & (extra < block_end)
    owns_any = tl.max(owns.to(tl.int32), axis=0) > 0
    extra_grad = tl.zeros([BLOCK_K], dtype=tl.float32)
    if owns_any:
        x_extra = tl.load(row_ptr + extra.to(tl.int64) * stride_vocab, mask=owns, other=float("-inf"))
        extra_grad = _dense_grad(x_extra.to(tl.float32), inv_temperature, row_max, log_sum, mean_shifted,
                                 grad_log_prob, grad_entropy, has_label, HAS_GRAD_LOG_PROB, HAS_GRAD_ENTROPY)
        extra_grad += tl.where(extra == label_column, grad_log_prob * inv_temperature, 0.0)
        log_p = tl.load(digit_log_probs_ptr + row * NUM_TOKENS + lanes, mask=is_token, other=float("-inf"))
        if has_grad_digits:
            upstream = tl.load(grad_digit_log_probs_ptr + row * NUM_TOKENS + lanes, mask=is_token, other=0.0)
            extra_grad += (upstream - tl.exp(log_p) * tl.sum(upstream, axis=0)) * inv_temperature
        if has_grad_ntl:
            target = tl.load(ntl_targets_ptr + row).to(tl.int32)
            counts = target != ignore_index
            if HAS_WEIGHTS:  # ntl = w * loss; a row of weight 0 counts as ignored
                weight = tl.load(weights_ptr + row)
                counts = counts & (weight > 0)
            if counts:  # a branch, not a 0 factor: an ignored target's row may hold NaN logits
                upstream_ntl = tl.load(grad_ntl_ptr + row) * inv_temperature
                if HAS_WEIGHTS:
                    upstream_ntl = upstream_ntl * weight
                extra_grad += upstream_ntl * _ntl_value_grad(log_p, lanes, target, values_ptr, squash_ptr, method,
                                                             NUM_TOKENS, HAS_VALUES, SQUASH)
    tl.debug_barrier()
    # A runtime bound: the row's last program runs only the chunks that hold columns.
    for chunk_start in range(block_start, block_end, BLOCK_VOCAB):
        cols = chunk_start + tl.arange(0, BLOCK_VOCAB)
        col_mask = cols < vocab_size  # (chunks end at block_end unless it is the row's end)
        x = tl.load(row_ptr + cols.to(tl.int64) * stride_vocab, mask=col_mask, other=float("-inf")).to(tl.float32)
        grad = _dense_grad(x, inv_temperature, row_max, log_sum, mean_shifted, grad_log_prob, grad_entropy,
                           has_label, HAS_GRAD_LOG_PROB, HAS_GRAD_ENTROPY).to(grad_logits_ptr.dtype.element_ty)
        tl.store(grad_row_ptr + cols.to(tl.int64) * grad_stride_vocab, grad, mask=col_mask)
    if owns_any:
        tl.debug_barrier()
        tl.store(grad_row_ptr + extra.to(tl.int64) * grad_stride_vocab,
                 extra_grad.to(grad_logits_ptr.dtype.element_ty), mask=owns)


def _forward(logits, labels, inv_temperature, digit_ids, ntl_targets, number_set, method, ignore_index):
    """Launch the forward on ``logits`` whose rows ``_row_layout`` can address. Returns the outputs over the
    flattened rows and ``(row_max, log_sum)`` (m and log s above) for the backward."""
    vocab_size = logits.shape[-1]
    n_rows = labels.numel()
    device = logits.device
    log_probs, entropy, row_max, log_sum = (
        torch.empty(n_rows, device=device, dtype=torch.float32) for _ in range(4)
    )
    digit_log_probs = torch.empty(n_rows, len(digit_ids), device=device, dtype=torch.float32)
    ntl = torch.empty(n_rows, device=device, dtype=torch.float32) if ntl_targets is not None else None
    if n_rows:
        inner_size, stride_outer, stride_inner = _row_layout(logits)
        block_vocab, num_warps = _vocab_blocks(vocab_size, FORWARD_BLOCK_VOCAB, FORWARD_WARPS)
        launch(
            _forward_kernel, (n_rows,),
            logits, labels, inv_temperature, digit_ids, ntl_targets if ntl_targets is not None else labels,
            *number_set.arguments(log_probs),
            log_probs, entropy, digit_log_probs, ntl if ntl is not None else log_probs, row_max, log_sum,
            vocab_size, inner_size, stride_outer, stride_inner, logits.stride(-1), ignore_index,
            METHOD_CODES[method], HAS_NTL=ntl is not None,
            BLOCK_VOCAB=block_vocab, num_warps=num_warps, **number_set.constexprs(len(digit_ids)),
            **kernel_options(logits),
        )
    return (log_probs, entropy, digit_log_probs, ntl), (row_max, log_sum)


def _vocab_blocks(vocab_size: int, block_vocab: int, num_warps: int) -> tuple[int, int]:
    """(columns, warps) of a program's vocabulary block: the configured block, or for a short vocabulary (the 10
    gathered digit columns, test vocabularies) a narrow one — 16 columns, else 1,024 — with fewer warps. Few distinct
    blocks mean few compiled variants."""
    if vocab_size >= block_vocab:
        return block_vocab, num_warps
    narrow = 16 if vocab_size <= 16 else min(1024, block_vocab)
    return narrow, max(1, min(num_warps, narrow // 256))


def _backward(grads, logits, labels, inv_temperature, digit_ids, ntl_targets, number_set, row_max, log_sum, entropy,
              digit_log_probs, method, ignore_index, inplace):
    """The dense gradient w.r.t. ``logits`` for the upstream ``grads`` (None where an output got no gradient)."""
    vocab_size = logits.shape[-1]
    n_rows = labels.numel()
    inner_size, stride_outer, stride_inner = _row_layout(logits)
    if inplace:
        grad_logits = logits
        grad_strides = (stride_outer, stride_inner, logits.stride(-1))
    else:
        grad_logits = torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)
        grad_strides = (inner_size * vocab_size, vocab_size, 1)  # row r = (outer, inner) sits at r * V
    if n_rows == 0:
        return grad_logits
    grad_log_probs, grad_entropy, grad_digit_log_probs, grad_ntl = (
        g.float().contiguous() if g is not None else None for g in grads
    )
    block_vocab, num_warps = _vocab_blocks(vocab_size, BACKWARD_BLOCK_VOCAB, BACKWARD_WARPS)
    absent = row_max  # any float32 tensor stands in for an upstream gradient that does not exist
    # The extra-columns lanes hold the K number tokens and the label: BLOCK_K >= K + 1 (16 for the digits)
    constexprs = number_set.constexprs(len(digit_ids)) | dict(BLOCK_K=number_block(len(digit_ids) + 1))
    chunks = BACKWARD_CHUNKS
    if constexprs["BLOCK_K"] > 16:
        # A larger set's per-program set-up (its K lanes: ids, ownership, their gradient) is ~5x the digits': one
        # program per row (up to 262,144 columns) runs it once, and four times the warps quarter the lanes each
        # thread keeps across the chunk loop (62 registers, not 128; 8 warps still spilled under triton 3.9 for fp32
        # with squash: bench/results/gpu_static_report.md, gpu_compile.md)
        chunks, num_warps = BACKWARD_CHUNKS_MANY_TOKENS, 4 * num_warps
    launch(
        _backward_kernel, (n_rows, triton.cdiv(vocab_size, block_vocab * chunks)),
        grad_logits, logits, labels, inv_temperature, digit_ids, ntl_targets if ntl_targets is not None else labels,
        *number_set.arguments(row_max),
        row_max, log_sum, entropy, digit_log_probs,
        *(g if g is not None else absent for g in (grad_log_probs, grad_entropy, grad_digit_log_probs, grad_ntl)),
        vocab_size, inner_size, stride_outer, stride_inner, logits.stride(-1), *grad_strides, ignore_index,
        METHOD_CODES[method], int(grad_digit_log_probs is not None), int(grad_ntl is not None),
        HAS_GRAD_LOG_PROB=grad_log_probs is not None, HAS_GRAD_ENTROPY=grad_entropy is not None,
        BLOCK_VOCAB=block_vocab, CHUNKS=chunks, num_warps=num_warps, **constexprs,
        **kernel_options(logits),
    )
    if inplace:
        # The logits now hold their gradient. Telling autograd so makes every later reader of them that saved them
        # (a second backward of this op, another op's backward) fail with autograd's "modified by an inplace
        # operation" error instead of computing with the gradient as if it were the logits.
        torch.autograd.graph.increment_version(logits)
    return grad_logits


class _LogProbEntropyNTLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, inv_temperature, digit_ids, ntl_targets, number_set, method, ignore_index,
                inplace):
        # The kernels read labels, temperatures, targets and digit ids as contiguous vectors, whatever the view.
        labels, inv_temperature, digit_ids = (
            kernel_vector(labels), kernel_vector(inv_temperature, torch.float32), kernel_vector(digit_ids, torch.long)
        )
        ntl_targets = kernel_vector(ntl_targets) if ntl_targets is not None else None
        outputs, (row_max, log_sum) = _forward(
            logits, labels, inv_temperature, digit_ids, ntl_targets, number_set, method, ignore_index
        )
        log_probs, entropy, digit_log_probs, ntl = outputs
        ctx.save_for_backward(
            logits, labels, inv_temperature, digit_ids, ntl_targets, row_max, log_sum, entropy, digit_log_probs,
            *number_set,
        )
        ctx.options = (method, ignore_index, inplace)
        ctx.set_materialize_grads(False)  # outputs without a gradient stay None: their terms are compiled out
        return log_probs, entropy, digit_log_probs, ntl

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, grad_digit_log_probs, grad_ntl):
        grads = (grad_log_probs, grad_entropy, grad_digit_log_probs, grad_ntl)
        if all(g is None for g in grads):
            return (None,) * 9
        logits, labels, inv_temperature, digit_ids, ntl_targets, row_max, log_sum, entropy, digit_log_probs = (
            ctx.saved_tensors[:9]
        )
        number_set = NumberTokenSet(*ctx.saved_tensors[9:])
        method, ignore_index, inplace = ctx.options
        grad_logits = _backward(
            grads, logits, labels, inv_temperature, digit_ids, ntl_targets, number_set, row_max, log_sum, entropy,
            digit_log_probs, method, ignore_index, inplace,
        )
        return grad_logits, None, None, None, None, None, None, None, None


class LogProbEntropyNTL(NamedTuple):
    """Per-position outputs of ``fused_logprob_entropy_ntl``; ``...`` is the logits' shape without V."""

    log_probs: torch.Tensor  # [...] log softmax(logits / T)[label]; 0 where label == ignore_index
    entropy: torch.Tensor  # [...] entropy of softmax(logits / T) over the whole vocabulary
    digit_log_probs: torch.Tensor  # [..., K] log_softmax of the K number-token logits / T; column k = slot k
    ntl: Optional[torch.Tensor]  # [...] per-position (weighted) NTL (0 where no target); None without ntl_targets


def logprob_entropy_ntl_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    digit_ids: torch.Tensor,
    temperature,
    ntl_targets: Optional[torch.Tensor] = None,
    method: str = "nll",
    ignore_index: int = -100,
    *,
    number_values: Optional[torch.Tensor] = None,
    squash_factor: Optional[float] = None,
    weights: Optional[torch.Tensor] = None,
) -> LogProbEntropyNTL:
    """Plain-autograd statement of ``fused_logprob_entropy_ntl`` (its CPU path and test oracle).

    ``temperature`` is a number or a tensor broadcastable to ``logits.shape[:-1]``; math in float32 (float64 for
    float64 logits), NTL by ``ntl_loss_reference(..., reduction="none", number_values=, squash_factor=,
    weights=)`` on the tempered logits (so ``ntl = w * loss`` per position).
    """
    dtype = compute_dtype(logits.dtype)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(dtype).clamp(min=TEMPERATURE_FLOOR).unsqueeze(-1)
    x = logits.to(dtype) / temperature
    probs = torch.softmax(x, dim=-1)
    # Where p = 0 the term p * x is 0 even for x = -inf (a masked vocabulary entry); mask before multiplying.
    expected_x = (probs * torch.where(probs > 0, x, torch.zeros_like(x))).sum(-1)
    entropy = torch.logsumexp(x, dim=-1) - expected_x
    has_label = labels != ignore_index
    # The label's log-softmax over rows with a label only (zeros elsewhere): the logits of a row whose label is
    # ignored never reach the gradient, not even as 0 * NaN.
    labelled_x = torch.where(has_label.unsqueeze(-1), x, torch.zeros_like(x))
    label_log_prob = torch.log_softmax(labelled_x, dim=-1).gather(
        -1, torch.where(has_label, labels, 0).long().unsqueeze(-1)
    ).squeeze(-1)
    log_probs = torch.where(has_label, label_log_prob, torch.zeros_like(label_log_prob))
    digit_log_probs = torch.log_softmax(x.index_select(-1, digit_ids.to(x.device)), dim=-1)
    ntl = None
    if ntl_targets is not None:
        ntl, _ = ntl_loss_reference(x, ntl_targets, digit_ids, method, "none", ignore_index,
                                    number_values=number_values, squash_factor=squash_factor, weights=weights)
    return LogProbEntropyNTL(log_probs, entropy, digit_log_probs, ntl)


def _check_labels(labels, logits: torch.Tensor, ignore_index: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of token ids, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the logits' shape without the vocabulary dimension "
            f"{tuple(logits.shape[:-1])}"
        )
    if labels.device != logits.device:
        raise ValueError(f"labels is on {labels.device} but logits are on {logits.device}; put both on one device")
    if not host_checks_values(labels):
        return  # the kernel asserts it on the device
    vocab_size = logits.shape[-1]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):  # an out-of-range label would silently read another row
        example = labels[bad][0].item()
        raise ValueError(f"labels must be token ids in [0, {vocab_size}) or ignore_index, found {example}")


def _check_temperature(temperature, rows: torch.Tensor, checked_by_kernel: bool = False):
    """A positive finite number, or a floating tensor broadcastable to ``rows.shape[:-1]`` (one value per row of the
    logits or hidden states ``rows``) of positive finite values. Returns a float or the detached tensor.

    The values of a tensor are checked on the host for CPU tensors (ValueError); elsewhere without a host sync, by
    the forward kernel's device-side assert when ``checked_by_kernel``, else by ``torch._assert_async``. Positive
    values below 1e-8 are floored there by the callers, as verl does; 0, negative, NaN or inf ones are refused.
    """
    if isinstance(temperature, torch.Tensor):
        if not temperature.dtype.is_floating_point:
            raise TypeError(f"temperature must be a floating tensor or a number, got dtype {temperature.dtype}")
        if temperature.device != rows.device:
            raise ValueError(f"temperature is on {temperature.device} but the rows are on {rows.device}")
        try:
            broadcasts = torch.broadcast_shapes(temperature.shape, rows.shape[:-1]) == rows.shape[:-1]
        except RuntimeError:
            broadcasts = False
        if not broadcasts:
            raise ValueError(
                f"temperature shape {tuple(temperature.shape)} must broadcast to the rows "
                f"{tuple(rows.shape[:-1])} (a per-sample [B] temperature of [B, T, V] logits is [B, 1])"
            )
        temperature = temperature.detach()
        if host_checks_values(temperature) or not checked_by_kernel:
            usable = (temperature > 0) & (temperature < float("inf"))  # False for NaN
            if not host_checks_values(temperature):
                torch._assert_async(usable.all(), "temperature must be positive and finite")
            elif not bool(usable.all()):
                example = temperature[~usable][0].item()
                raise ValueError(f"temperature must be positive and finite, found {example}")
        return temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number or a tensor, got {type(temperature).__name__}")
    if not 0 < temperature < float("inf"):  # also False for NaN
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    return float(temperature)


def _inverse_temperature(temperature, leading_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """1 / temperature per row, float32 ``leading_shape``, the temperature floored at 1e-8 as verl does. A value the
    kernels must refuse (<= 0 or NaN: NaN here; +inf: 0 here) fails the forward kernel's ``inv_temperature > 0``
    device-side assert, without a host sync."""
    if not isinstance(temperature, torch.Tensor):
        return torch.full(leading_shape, 1.0 / temperature, device=device)
    rows = torch.broadcast_to(temperature, leading_shape)
    floored = torch.where(rows > 0, rows.clamp(min=TEMPERATURE_FLOOR), torch.full_like(rows, float("nan")))
    return floored.float().reciprocal()


def _may_overlap(tensor: torch.Tensor) -> bool:
    """Whether two indices of ``tensor`` may address one element (an ``expand``ed tensor, stride 0): the strides,
    in increasing order, do not each step past everything the smaller ones span."""
    span = 0
    for stride, size in sorted((stride, size) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def fused_logprob_entropy_ntl(
    logits: torch.Tensor,
    labels: torch.Tensor,
    digit_ids,
    *,
    temperature=1.0,
    ntl_targets: Optional[torch.Tensor] = None,
    method: str = "nll",
    ignore_index: int = -100,
    inplace_backward: bool = False,
    number_values: Optional[torch.Tensor] = None,
    squash_factor: Optional[float] = None,
    weights: Optional[torch.Tensor] = None,
) -> LogProbEntropyNTL:
    """Target log-prob, entropy, number-token log-probs and per-position NTL from one read of the logits.

    Args:
        logits: ``[..., V]`` float32/bfloat16/float16 (float64 runs the reference), any strides; rows whose
            leading strides cannot be described by two strides are copied first.
        labels: ``[...]`` integer token ids in [0, V) (the next tokens), or ``ignore_index`` (log-prob 0).
        digit_ids: K distinct token ids in [0, V), 1 <= K <= 2048; entry k is the token of slot k (the 10
            digits: entry i is the token of digit i, ``digit_token_ids``).
        temperature: a positive finite number, or a floating tensor of positive finite values broadcastable to
            ``[...]`` (per row; verl's per-sample temperature of ``[B, T, V]`` logits is ``[B, 1]``), floored at
            1e-8 as verl does. 0, negative, NaN or inf values are refused (ValueError on CPU, a device-side assert
            on the GPU).
            Everything, digits included, is computed on ``logits / temperature`` in float32, so the digits are
            scored under the distribution they were sampled from. Not differentiated.
        ntl_targets: optional ``[...]`` slots 0..K-1 (digit values 0..9 for the digits) or ``ignore_index``
            (``digit_targets(labels, digit_ids)``).
        method: NTL definition, as in ``ntl_loss`` (``"nll"``, ``"confidence"``, ``"was"``, ``"mse"``); per
            position, so ``"confidence"`` is ``-log max(p[y], 1e-8)``.
        number_values, squash_factor: the tokens' values ``[K]`` and was's squashing, as in ``ntl_loss``.
        weights: optional ``[...]`` finite weights >= 0 (needs ``ntl_targets``): the per-position ``ntl`` is
            ``w * loss`` (0 where w = 0, whose row's number-token logits are then not read), as ``ntl_loss``'s
            ``"none"``; not differentiated.
        ignore_index: the label (and NTL target) of positions that do not count; an int that fits in int32.
        inplace_backward: write the gradient into the logits' buffer instead of a new tensor (saves a [..., V]
            allocation). Only when nothing else needs the logits after this op's backward (verl's tempered
            copy, for instance); backward then runs once. The write bumps the logits' version counter, so a
            second backward (``retain_graph``) or a later backward of another op that saved the logits fails with
            autograd's "modified by an inplace operation" error rather than computing with the overwritten
            values. Logits whose elements overlap (``expand``ed, stride 0) are refused (ValueError).
    Returns:
        ``LogProbEntropyNTL(log_probs [...], entropy [...], digit_log_probs [..., K], ntl [...] or None)``, float32
        (float64 for float64 logits). Any combination of them can be differentiated; the gradient w.r.t.
        ``logits`` is dense, in the logits' dtype, written by one kernel.

    Non-finite logits stay in their row: NaN or +inf anywhere in a row makes that row's entropy NaN, and its
    log-prob too unless the label is ignored; in a digit column they make its digit log-probs NaN, and its ntl too
    unless the target is ignored; -inf is a token of probability 0 (a masked vocabulary entry; a -inf label gives
    log-prob -inf). Other rows are unaffected. Gradients: an ignored label's log-prob and an ignored target's ntl
    contribute exactly zero whatever the row holds; an output that is NaN in a row and receives an upstream
    gradient there (even 0) gives that row a NaN gradient, as torch's autograd does.

    CUDA tensors run the Triton kernels (one forward pass over each row, one backward pass) without a host sync:
    out-of-range labels, targets or digit ids stop the kernel with a device-side assert (reported at the next
    synchronisation, as ``cross_entropy`` does). CPU tensors run ``logprob_entropy_ntl_reference``, or the Triton
    kernels under ``TRITON_INTERPRET=1``; their values are checked on the host (ValueError).
    """
    check_logits(logits)
    ignore_index = check_ignore_index(ignore_index)
    _check_labels(labels, logits, ignore_index)
    digit_ids = check_digit_ids(digit_ids, logits.shape[-1], logits.device)
    use_kernels = use_triton(logits) and logits.dtype != torch.float64
    temperature = _check_temperature(temperature, logits, checked_by_kernel=use_kernels)
    check_method(method)
    if ntl_targets is not None:
        check_targets(ntl_targets, logits.shape[:-1], logits.device, ignore_index, len(digit_ids))
    number_values = check_number_values(number_values, len(digit_ids), logits.device)
    squash_factor = check_squash_factor(squash_factor)
    weights = check_weights(weights, logits.shape[:-1], logits.device)
    if weights is not None and ntl_targets is None:
        raise ValueError("weights weigh the per-position ntl: pass ntl_targets with them (or weights=None)")
    options = dict(number_values=number_values, squash_factor=squash_factor, weights=weights)
    if inplace_backward and _may_overlap(logits):
        raise ValueError(
            f"inplace_backward=True writes the gradient into the logits, whose elements overlap here (an expanded "
            f"tensor, strides {logits.stride()} for shape {tuple(logits.shape)}): several gradient entries would "
            "share one element; pass inplace_backward=False or logits.contiguous()"
        )
    if not use_kernels:
        return logprob_entropy_ntl_reference(
            logits, labels, digit_ids, temperature, ntl_targets, method, ignore_index, **options
        )

    leading_shape = logits.shape[:-1]
    if _row_layout(logits) is None:
        logits = logits.contiguous()
    log_probs, entropy, digit_log_probs, ntl = _LogProbEntropyNTLFunction.apply(
        logits, labels, _inverse_temperature(temperature, leading_shape, logits.device), digit_ids, ntl_targets,
        NumberTokenSet.of(digit_ids, number_values, squash_factor, weights), method, ignore_index, inplace_backward,
    )
    return LogProbEntropyNTL(
        log_probs.view(leading_shape),
        entropy.view(leading_shape),
        digit_log_probs.view(*leading_shape, len(digit_ids)),
        ntl.view(leading_shape) if ntl is not None else None,
    )
