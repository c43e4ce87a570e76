"""Pure-torch statement of the digit Number Token Loss: the CPU path and the test oracle.

Everything here is plain autograd on small tensors and works in float64, so the Triton kernels are tested
against it and it is tested against ``torch.autograd.gradcheck`` and the paper authors' ``ntloss``.

Notation, per position with digit target ``y`` (an integer 0..9):

    z   = the 10 digit logits ``logits[..., digit_ids]`` (entry i belongs to digit i)
    p   = softmax(z) computed in float32 (float64 for float64 input)
    nll        = -log p[y]
    was        = sum_i p_i * |i - y|               (Wasserstein-1 to the one-hot label, the paper's NTL-WAS)
    mse        = (y - sum_i p_i * i) ** 2          (the paper's NTL-MSE)
    confidence = -log(max(mean of p[y] over the reduction group, 1e-8))

A reduction group is one position (``"none"``), one entry of the first dimension (``"sample"``) or everything
(``"mean"``). nll/was/mse are averaged over the valid positions of a group; confidence averages the
probabilities first. A group without a valid position gives 0 (and zero gradient).

Non-finite logits: only the digit columns of valid positions are read. A NaN (or +inf) there makes that position's
quantity, and so its group's loss, NaN; positions that do not count (``ignore_index``, other columns) never change
a value and get exactly zero gradient, whatever they hold.
"""

from __future__ import annotations

import math

import torch

METHODS = ("nll", "confidence", "was", "mse")
REDUCTIONS = ("none", "sample", "mean")
CONFIDENCE_FLOOR = 1e-8
NUM_DIGITS = 10


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for the oracle); every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def digit_log_probs_reference(logits: torch.Tensor, digit_ids: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """log-softmax over the 10 digit logits: ``[..., V]`` -> ``[..., 10]`` in float32 (float64 stays).

    Rows where ``counted [...]`` is False get the log-probs of zero logits: their values are never used, and a
    non-finite logit there would otherwise reach the gradient as 0 * NaN (the gradient of a row that does not count
    is exactly zero).
    """
    digit_logits = logits[..., digit_ids.to(logits.device)].to(compute_dtype(logits.dtype))
    digit_logits = torch.where(counted.unsqueeze(-1), digit_logits, torch.zeros_like(digit_logits))
    return torch.log_softmax(digit_logits, dim=-1)


def position_quantity(digit_log_probs: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    """The per-position quantity each method averages over a group.

    For nll/was/mse this is the per-position loss; for confidence it is ``p[y]`` (the group mean of it is taken
    before the log). Positions whose target is not a digit must be masked by the caller; their target is
    clamped here only so the gather stays in range.
    """
    y = targets.clamp(0, NUM_DIGITS - 1).long()
    if method in ("nll", "confidence"):
        log_p_target = digit_log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return -log_p_target if method == "nll" else log_p_target.exp()
    probs = digit_log_probs.exp()
    values = torch.arange(NUM_DIGITS, device=probs.device, dtype=probs.dtype)
    if method == "was":
        distance = (values - y.unsqueeze(-1).to(probs.dtype)).abs()
        return (probs * distance).sum(-1)
    expected_digit = (probs * values).sum(-1)
    return (expected_digit - y.to(probs.dtype)) ** 2


def finish_groups(quantity_sum: torch.Tensor, counts: torch.Tensor, method: str) -> torch.Tensor:
    """Turn a group's sum of per-position quantities and its count of valid positions into the group's loss."""
    has_digits = counts > 0
    mean = quantity_sum / counts.clamp(min=1).to(quantity_sum.dtype)
    if method == "confidence":
        mean = -torch.log(mean.clamp(min=CONFIDENCE_FLOOR))
    return torch.where(has_digits, mean, torch.zeros_like(mean))


def ntl_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    digit_ids: torch.Tensor,
    method: str = "nll",
    reduction: str = "mean",
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit NTL by plain torch ops. Returns ``(loss, counts)``.

    Args:
        logits: ``[..., V]`` floating point, any strides.
        targets: ``[...]`` integer digit values 0..9, or ``ignore_index``.
        digit_ids: ``[10]`` token ids, entry i is the token of digit i.
    Returns:
        loss: float32 (float64 for float64 logits); ``targets.shape`` for ``"none"``, ``[targets.shape[0]]`` for
            ``"sample"``, ``[]`` for ``"mean"``.
        counts: int64 number of valid positions per group, same shape as ``loss``.
    """
    valid = targets != ignore_index
    quantity = position_quantity(digit_log_probs_reference(logits, digit_ids, valid), targets, method)
    quantity = torch.where(valid, quantity, torch.zeros_like(quantity))
    if reduction == "none":
        quantity_sum, counts = quantity, valid.long()
    elif reduction == "sample":
        groups = (targets.shape[0], math.prod(targets.shape[1:]))
        quantity_sum = quantity.reshape(groups).sum(-1)
        counts = valid.reshape(groups).sum(-1)
    else:
        quantity_sum, counts = quantity.sum(), valid.sum()
    return finish_groups(quantity_sum, counts, method), counts
