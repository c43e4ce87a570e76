"""Number-token logits straight from hidden states, for verl's fused LM head (``use_fused_kernels``), where [N, V]
logits never exist.

The LM head computes ``logits = h @ W.T`` (``W`` is ``[V, d]``); the K number-token columns of it are
``h @ W[digit_ids].T``, an ``[N, d] x [d, K]`` product that never touches the rest of the vocabulary. Plain torch
autograd already gives the right gradients: ``index_select``'s backward adds the ``[K, d]`` gradient into rows
``digit_ids`` of a zero ``[V, d]`` tensor, so ``h`` gets ``grad @ W[digit_ids]`` and ``W`` gets non-zeros in
exactly those K rows (dense in shape, as ``W.grad`` already is). No kernel is needed: it is a small matmul
(K = 10 digits; K = 1,110 for Llama-3's '0'..'999' is still under 1% of its 128,256-row LM head).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .checks import check_digit_ids, check_ignore_index, check_method
from .logprob_entropy_ntl import TEMPERATURE_FLOOR, _check_temperature
from .ntl_loss import ntl_loss


def digit_logits_from_hidden(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, digit_ids, temperature=1.0
) -> torch.Tensor:
    """The K number-token logits of ``hidden @ lm_head_weight.T``, divided by ``temperature``, without the
    vocabulary.

    Args:
        hidden: ``[..., d]`` final hidden states (after the final norm), any floating dtype.
        lm_head_weight: ``[V, d]`` the LM head's weight (for tied embeddings, the embedding matrix); same dtype.
        digit_ids: K distinct token ids in [0, V), 1 <= K <= 2048; entry k is the token of slot k (the 10 digits:
            entry i is the token of digit i).
        temperature: a positive finite number or a tensor of such values broadcastable to ``hidden.shape[:-1]``
            (floored at 1e-8; 0, negative, NaN or inf values are refused: ValueError on CPU, an asynchronous
            device-side assert on the GPU).
    Returns:
        ``[..., K]`` float32 (float64 for float64 inputs): the matmul runs in the inputs' dtype as the LM head
        does, the division by the temperature in float32. Differentiable w.r.t. ``hidden`` and the K rows
        ``lm_head_weight[digit_ids]`` (every other row of ``lm_head_weight.grad`` gets zeros).
    """
    if not isinstance(hidden, torch.Tensor) or not hidden.dtype.is_floating_point or hidden.dim() < 1:
        raise TypeError(f"hidden must be a floating tensor [..., d], got {getattr(hidden, 'dtype', type(hidden))}")
    if not isinstance(lm_head_weight, torch.Tensor) or lm_head_weight.dim() != 2:
        raise ValueError(f"lm_head_weight must be a [V, d] tensor, got shape {getattr(lm_head_weight, 'shape', None)}")
    if lm_head_weight.shape[1] != hidden.shape[-1] or lm_head_weight.dtype != hidden.dtype:
        raise ValueError(
            f"lm_head_weight [V, d] must match hidden [..., d] in d and dtype: got {tuple(lm_head_weight.shape)} "
            f"{lm_head_weight.dtype} and {tuple(hidden.shape)} {hidden.dtype}"
        )
    if lm_head_weight.device != hidden.device:
        raise ValueError(f"lm_head_weight is on {lm_head_weight.device} but hidden is on {hidden.device}")
    digit_ids = check_digit_ids(digit_ids, lm_head_weight.shape[0], hidden.device)
    temperature = _check_temperature(temperature, hidden)
    digit_logits = hidden @ lm_head_weight.index_select(0, digit_ids).T
    digit_logits = digit_logits.to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    if isinstance(temperature, torch.Tensor):
        return digit_logits / temperature.to(digit_logits.dtype).clamp(min=TEMPERATURE_FLOOR).unsqueeze(-1)
    return digit_logits / temperature


class HiddenDigitOutput(NamedTuple):
    """``digit_log_probs [..., K]`` and the per-position ``ntl [...]`` (None without targets)."""

    digit_log_probs: torch.Tensor
    ntl: Optional[torch.Tensor]


def digit_ntl_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    digit_ids,
    *,
    temperature=1.0,
    ntl_targets: Optional[torch.Tensor] = None,
    method: str = "nll",
    ignore_index: int = -100,
    number_values: Optional[torch.Tensor] = None,
    squash_factor: Optional[float] = None,
    weights: Optional[torch.Tensor] = None,
) -> HiddenDigitOutput:
    """The number-token part of ``fused_logprob_entropy_ntl`` computed from hidden states: the same definitions
    (log-softmax over the K tempered number-token logits; NTL as ``ntl_loss(..., reduction="none")``, so
    ``w * loss`` with weights), by feeding ``digit_logits_from_hidden`` to ``ntl_loss`` with ``digit_ids =
    arange(K)``.

    Args: as ``digit_logits_from_hidden``, plus ``ntl_targets [...]`` slots 0..K-1 (digit values 0..9 for the
    digits) or ``ignore_index`` (an int that fits in int32; ``digit_targets(labels, digit_ids)``), and ``method``,
    ``number_values``, ``squash_factor``, ``weights`` (needs ``ntl_targets``) as in ``ntl_loss``.

    Non-finite values stay in their row: a NaN or inf in a row of ``hidden`` makes that row's digit log-probs NaN,
    and its ntl too unless its target is ignored; a row whose target is ignored gets exactly zero gradient from
    ``ntl`` in ``hidden``, but its NaN still reaches ``lm_head_weight.grad`` through the matmul (0 * NaN), as in
    any linear layer. A non-finite entry of ``lm_head_weight``'s digit rows reaches every row.
    """
    check_method(method)
    ignore_index = check_ignore_index(ignore_index)
    digit_logits = digit_logits_from_hidden(hidden, lm_head_weight, digit_ids, temperature)
    if weights is not None and ntl_targets is None:
        raise ValueError("weights weigh the per-position ntl: pass ntl_targets with them (or weights=None)")
    ntl = None
    if ntl_targets is not None:
        own_columns = torch.arange(digit_logits.shape[-1], device=digit_logits.device)
        ntl = ntl_loss(digit_logits, ntl_targets, own_columns, method=method, reduction="none",
                       ignore_index=ignore_index, number_values=number_values, squash_factor=squash_factor,
                       weights=weights)
    return HiddenDigitOutput(torch.log_softmax(digit_logits, dim=-1), ntl)
