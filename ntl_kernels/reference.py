"""Pure-torch statement of the Number Token Loss: the CPU path and the test oracle.

Everything here is plain autograd on small tensors and works in float64, so the Triton kernels are tested
against it and it is tested against ``torch.autograd.gradcheck`` and the paper authors' ``ntloss``.

A number-token set is K token ids ``digit_ids [K]`` with values ``v [K]`` (default ``v_k = k``: the 10 digits,
K = 10). A target ``y`` is a slot 0..K-1 of the set. Per position:

    z   = the K logits ``logits[..., digit_ids]`` (entry k belongs to token k of the set)
    p   = softmax(z) computed in float32 (float64 for float64 input)
    nll        = -log p[y]                           (the token, not its value: '7' and '007' differ)
    was        = sum_k p_k * dist(v_k, v_y)          (Wasserstein-1 to the one-hot label, the paper's NTL-WAS)
    mse        = (sum_k p_k * v_k - v_y) ** 2        (the paper's NTL-MSE)
    confidence = -log(max(mean of p[y] over the reduction group, 1e-8))

    dist(a, b) = |a - b|, or with ``squash_factor s`` (ntloss's rule, for sets of large values):
                 0 if a == b, else 1 + (|a - b| - dmin) * (s - 1) / (dmax - dmin)
    where dmin / dmax are the smallest non-zero / the largest distance between two values of the set (the closest
    wrong token costs 1, the farthest s). A set with one non-zero distance (dmax == dmin) costs 1 for every wrong
    token (ntloss gives NaN there). mse is not squashed.

A reduction group is one position (``"none"``), one entry of the first dimension (``"sample"``) or everything
(``"mean"``). nll/was/mse are averaged over the valid positions of a group; confidence averages the
probabilities first. A group without a valid position gives 0 (and zero gradient).

Weights ``w`` (optional, >= 0, one per position; ntloss's ``loss_weights``): the group means become weighted means
sum(w q) / sum(w) over the group's valid positions (0 where that sum is 0), and ``"none"`` gives ``w * loss``. A
position of weight 0 is not read, as an ignored one; ``counts`` still counts every valid position.

Non-finite logits: only the number-token columns of valid positions are read. A NaN (or +inf) there makes that
position's quantity, and so its group's loss, NaN; positions that do not count (``ignore_index``, weight 0, other
columns) never change a value and get exactly zero gradient, whatever they hold.
"""

from __future__ import annotations

import math

import torch

METHODS = ("nll", "confidence", "was", "mse")
REDUCTIONS = ("none", "sample", "mean")
CONFIDENCE_FLOOR = 1e-8
NUM_DIGITS = 10
MAX_NUMBER_TOKENS = 2048


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for the oracle); every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def digit_log_probs_reference(logits: torch.Tensor, digit_ids: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """log-softmax over the K number-token logits: ``[..., V]`` -> ``[..., K]`` in float32 (float64 stays).

    Rows where ``counted [...]`` is False get the log-probs of zero logits: their values are never used, and a
    non-finite logit there would otherwise reach the gradient as 0 * NaN (the gradient of a row that does not count
    is exactly zero).
    """
    digit_logits = logits[..., digit_ids.to(logits.device)].to(compute_dtype(logits.dtype))
    digit_logits = torch.where(counted.unsqueeze(-1), digit_logits, torch.zeros_like(digit_logits))
    return torch.log_softmax(digit_logits, dim=-1)


def squash_parameters(values: torch.Tensor, squash_factor: float) -> torch.Tensor:
    """``[dmin, (s - 1) / (dmax - dmin)]`` of the set's values ``[K]`` (same dtype, same device, no host sync):
    dmin the smallest non-zero distance between two values (0 if there is none), the slope 0 where dmax == dmin."""
    ordered = values.sort().values
    gaps = ordered[1:] - ordered[:-1]
    no_gap = torch.full_like(ordered[:1], math.inf)
    smallest = torch.cat([torch.where(gaps > 0, gaps, math.inf), no_gap]).min()
    smallest = torch.where(torch.isinf(smallest), torch.zeros_like(smallest), smallest)
    span = (ordered[-1] - ordered[0]) - smallest
    slope = torch.where(span > 0, (squash_factor - 1) / torch.where(span > 0, span, 1.0), torch.zeros_like(span))
    return torch.stack([smallest, slope])


def value_distance(values: torch.Tensor, target_values: torch.Tensor, squash: torch.Tensor | None) -> torch.Tensor:
    """dist(v_k, v_y) ``[..., K]`` of the set's values ``[K]`` and the targets' values ``[...]`` (module docstring);
    ``squash`` is ``squash_parameters`` or None (plain |v_k - v_y|)."""
    distance = (values - target_values.unsqueeze(-1)).abs()
    if squash is None:
        return distance
    squashed = 1 + (distance - squash[0]) * squash[1]
    return torch.where(distance == 0, torch.zeros_like(distance), squashed)


def position_quantity(
    digit_log_probs: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    number_values: torch.Tensor | None = None,
    squash: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-position quantity each method averages over a group.

    For nll/was/mse this is the per-position loss; for confidence it is ``p[y]`` (the group mean of it is taken
    before the log). Positions whose target is not a slot must be masked by the caller; their target is
    clamped here only so the gather stays in range. ``number_values [K]`` (None: 0..K-1) and ``squash``
    (``squash_parameters`` or None) as in the module docstring.
    """
    num_tokens = digit_log_probs.shape[-1]
    y = targets.clamp(0, num_tokens - 1).long()
    if method in ("nll", "confidence"):
        log_p_target = digit_log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return -log_p_target if method == "nll" else log_p_target.exp()
    probs = digit_log_probs.exp()
    if number_values is None:
        values = torch.arange(num_tokens, device=probs.device, dtype=probs.dtype)
        target_values = y.to(probs.dtype)
    else:
        values = number_values.to(device=probs.device, dtype=probs.dtype)
        target_values = values[y]
    if method == "was":
        squash = squash.to(values) if squash is not None else None
        return (probs * value_distance(values, target_values, squash)).sum(-1)
    expected_value = (probs * values).sum(-1)
    return (expected_value - target_values) ** 2


def finish_groups(quantity_sum: torch.Tensor, counts: torch.Tensor, method: str) -> torch.Tensor:
    """Turn a group's sum of per-position quantities and its count of valid positions (or, weighted, its sum of
    weights) into the group's loss; 0 where the count is 0."""
    has_digits = counts > 0
    if counts.dtype.is_floating_point:  # a sum of weights: no clamp at 1 (weights may be below 1)
        mean = quantity_sum / torch.where(has_digits, counts, torch.ones_like(counts))
    else:
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
    *,
    number_values: torch.Tensor | None = None,
    squash_factor: float | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Number Token Loss by plain torch ops (module docstring). Returns ``(loss, counts)``.

    Args:
        logits: ``[..., V]`` floating point, any strides.
        targets: ``[...]`` integer slots 0..K-1 of the number-token set, or ``ignore_index``.
        digit_ids: ``[K]`` token ids, entry k is the token of slot k (K = 10: entry i is the token of digit i).
        number_values: ``[K]`` the tokens' values (None: 0..K-1, the digits).
        squash_factor: None (|v_k - v_y|) or > 1: was's distances squashed as ntloss's ``squash_factor``.
        weights: ``[...]`` (targets' shape) finite weights >= 0, or None (all 1).
    Returns:
        loss: float32 (float64 for float64 logits); ``targets.shape`` for ``"none"``, ``[targets.shape[0]]`` for
            ``"sample"``, ``[]`` for ``"mean"``.
        counts: int64 number of valid positions per group, same shape as ``loss``.
    """
    valid = targets != ignore_index
    counted = valid if weights is None else valid & (weights > 0)
    log_probs = digit_log_probs_reference(logits, digit_ids, counted)
    values = torch.arange(len(digit_ids), device=log_probs.device, dtype=log_probs.dtype)
    if number_values is not None:
        values = number_values.to(device=log_probs.device, dtype=log_probs.dtype)
    squash = None if squash_factor is None else squash_parameters(values, squash_factor)
    quantity = position_quantity(log_probs, targets, method, None if number_values is None else values, squash)
    quantity = torch.where(counted, quantity, torch.zeros_like(quantity))
    counts = _group_sum(valid.long(), reduction, targets.shape)
    if weights is None:
        return finish_groups(_group_sum(quantity, reduction, targets.shape), counts, method), counts
    weights = torch.where(counted, weights.to(quantity.dtype), torch.zeros_like(quantity))
    if reduction == "none":  # each position is its own group: w * its loss (ntloss's "none")
        return weights * finish_groups(quantity, counted.long(), method), counts
    weighted_sum = _group_sum(weights * quantity, reduction, targets.shape)
    return finish_groups(weighted_sum, _group_sum(weights, reduction, targets.shape), method), counts


def _group_sum(per_position: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    """Sum of ``per_position [...]`` over each reduction group (the identity for ``"none"``)."""
    if reduction == "none":
        return per_position
    if reduction == "sample":
        return per_position.reshape(shape[0], math.prod(shape[1:])).sum(-1)
    return per_position.sum()
