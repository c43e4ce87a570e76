"""The ``ntl_info`` a reward receives, checked and put in batched form.

Two forms (keys exactly as below; values may be torch tensors, numpy arrays or nested lists):

(a) precomputed loss: ``{"ntl_loss": x}`` with x a real number or None (one sample), or a length-B sequence of
    them (batch). None, NaN, +-inf and negative numbers mean "NTL unavailable" (status ``"missing"`` or
    ``"invalid_loss"``), never an error: every NTL method gives a finite loss >= 0.

(b) number-token log-probabilities of the response tokens, from which the reward computes the loss itself:

    ``"digit_log_probs"``  float ``[L, K]`` (batch ``[B, T, K]``): row t is the model's distribution over the K
                           number tokens for response token t (the logits that *generated* token t, i.e. already
                           shifted). Log-probabilities normalised over the K tokens, full-vocabulary
                           log-probabilities of their columns, or raw logits all give the same loss: NTL
                           renormalises over the set (log-softmax is shift invariant).
    ``"response_ids"``     integer ``[L]`` (``[B, T]``): the response token ids (prompt excluded).
    ``"digit_ids"``        integer ``[K]``: entry i is the token id of number token i (Qwen2.5: the digits,
                           15..24; Llama-3: ``ntl_kernels.number_tokens(llama3_tokenizer()).ids``, K = 1,110).
    ``"number_texts"``     optional, K strings: the digit string token i writes (``"007"``); default the digits
                           '0'..'9' (then K must be 10). It must hold '0'..'9' and, for each length it uses, every
                           digit string of that length: place-value targets (``ntl_reward.scoring``) need them.
    ``"response_mask"``    optional bool/0-1 ``[L]`` (``[B, T]``): positions to score; padding and any prompt
                           tokens passed along must be 0. Default: every position.

A dict with neither ``"ntl_loss"`` nor ``"digit_log_probs"`` (``{}``, unrelated keys) or ``ntl_info=None`` means
"NTL unavailable" (status ``"missing"``). Structural mistakes — a non-dict, both forms at once, half of form (b),
wrong shapes or dtypes, a non-numeric loss — are caller bugs and raise ValueError naming the key.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import torch

from ntl_kernels import NumberTokens
from ntl_kernels.tokens import DIGIT_TEXTS, check_closed

LOSS_KEY = "ntl_loss"
LOG_PROBS_KEY = "digit_log_probs"
RESPONSE_IDS_KEY = "response_ids"
DIGIT_IDS_KEY = "digit_ids"
MASK_KEY = "response_mask"
NUMBER_TEXTS_KEY = "number_texts"


class PrecomputedLosses(NamedTuple):
    """Form (a): one finite loss >= 0 per sample, or None where unavailable, with the reason."""

    losses: list[float | None]
    invalid: list[bool]  # True where a value was given but is NaN, infinite or negative


class DigitLogProbs(NamedTuple):
    """Form (b), batched: ``log_probs [B, T, K]`` float, ``response_ids [B, T]`` int64,
    ``digit_ids [K]`` int64, ``mask [B, T]`` bool, all on ``log_probs``' device; ``numbers`` the number-token set
    (``digit_ids`` with their texts)."""

    log_probs: torch.Tensor
    response_ids: torch.Tensor
    digit_ids: torch.Tensor
    mask: torch.Tensor
    numbers: NumberTokens


def _as_tensor(value, key: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"ntl_info[{key!r}] must be a tensor, array or rectangular nested list: {error}") from error


def _precomputed_value(value, key: str) -> tuple[float | None, bool]:
    """(loss or None, invalid) for one precomputed loss."""
    if value is None:
        return None, False
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{key} must be a real number or None, got {type(value).__name__} {value!r:.80}")
    loss = float(value)
    if not math.isfinite(loss) or loss < 0:
        return None, True
    return loss, False


def _precomputed(value, batch_size: int | None) -> PrecomputedLosses:
    if batch_size is None:
        loss, invalid = _precomputed_value(value, f"ntl_info[{LOSS_KEY!r}]")
        return PrecomputedLosses([loss], [invalid])
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist() if value.dim() == 1 else value
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != batch_size:
        raise ValueError(
            f"ntl_info[{LOSS_KEY!r}] must hold one loss per sample ({batch_size}), got {type(value).__name__}"
        )
    pairs = [_precomputed_value(v, f"ntl_info[{LOSS_KEY!r}][{i}]") for i, v in enumerate(value)]
    return PrecomputedLosses([loss for loss, _ in pairs], [invalid for _, invalid in pairs])


def _digit_log_probs(ntl_info: Mapping, batch_size: int | None) -> DigitLogProbs:
    for key in (RESPONSE_IDS_KEY, DIGIT_IDS_KEY):
        if key not in ntl_info:
            raise ValueError(f"ntl_info has {LOG_PROBS_KEY!r} but lacks {key!r}; form (b) needs both")
    log_probs = _as_tensor(ntl_info[LOG_PROBS_KEY], LOG_PROBS_KEY)
    response_ids = _as_tensor(ntl_info[RESPONSE_IDS_KEY], RESPONSE_IDS_KEY)
    digit_ids = _as_tensor(ntl_info[DIGIT_IDS_KEY], DIGIT_IDS_KEY)
    mask = ntl_info.get(MASK_KEY)
    mask = torch.ones(response_ids.shape, dtype=torch.bool) if mask is None else _as_tensor(mask, MASK_KEY)
    if response_ids.numel() == 0:  # an empty list reads as float32; an empty response has no dtype to get wrong
        response_ids, mask = response_ids.long(), mask.long()

    texts = ntl_info.get(NUMBER_TEXTS_KEY)
    numbers = _number_tokens(digit_ids, DIGIT_TEXTS if texts is None else texts)
    size = len(numbers)
    leading = () if batch_size is None else (batch_size,)
    expected = f"[L, {size}]" if batch_size is None else f"[{batch_size}, T, {size}]"
    if not log_probs.dtype.is_floating_point:
        raise ValueError(f"ntl_info[{LOG_PROBS_KEY!r}] must be floating point {expected}, got {log_probs.dtype}")
    shape = tuple(log_probs.shape)
    if len(shape) != len(leading) + 2 or shape[: len(leading)] != leading or shape[-1] != size:
        raise ValueError(
            f"ntl_info[{LOG_PROBS_KEY!r}] must have shape {expected} (one column per entry of "
            f"{DIGIT_IDS_KEY!r}), got {shape}"
        )
    for key, tensor in ((RESPONSE_IDS_KEY, response_ids), (MASK_KEY, mask)):
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
            raise ValueError(f"ntl_info[{key!r}] must be an integer (or bool) tensor, got {tensor.dtype}")
        if tensor.shape != log_probs.shape[:-1]:
            raise ValueError(
                f"ntl_info[{key!r}] has shape {tuple(tensor.shape)}; it must be {LOG_PROBS_KEY!r}'s shape without "
                f"the digit dimension, {tuple(log_probs.shape[:-1])}"
            )
    if batch_size is None:
        log_probs, response_ids, mask = log_probs.unsqueeze(0), response_ids.unsqueeze(0), mask.unsqueeze(0)
    device = log_probs.device
    return DigitLogProbs(
        log_probs, response_ids.to(device).long(), numbers.ids.to(device), mask.to(device) != 0, numbers
    )


def _number_tokens(digit_ids: torch.Tensor, texts) -> NumberTokens:
    """``digit_ids`` with their texts as a closed number-token set, or ValueError naming the key."""
    if digit_ids.dtype.is_floating_point or digit_ids.dtype == torch.bool or digit_ids.dim() != 1:
        raise ValueError(f"ntl_info[{DIGIT_IDS_KEY!r}] must be a 1-D list of integer token ids, got {digit_ids!r:.120}")
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
        raise ValueError(f"ntl_info[{NUMBER_TEXTS_KEY!r}] must be a sequence of digit strings, got {texts!r:.80}")
    if len(texts) != len(digit_ids):
        raise ValueError(
            f"ntl_info[{DIGIT_IDS_KEY!r}] must be {len(texts)} integer token ids, one per number text "
            f"({NUMBER_TEXTS_KEY!r}, default the 10 digits), got {digit_ids.tolist()!r:.120}"
        )
    try:
        numbers = NumberTokens(digit_ids, tuple(texts))
    except ValueError as error:
        raise ValueError(f"ntl_info[{DIGIT_IDS_KEY!r}] / ntl_info[{NUMBER_TEXTS_KEY!r}]: {error}") from error
    try:
        return check_closed(numbers)
    except ValueError as error:
        raise ValueError(f"ntl_info[{NUMBER_TEXTS_KEY!r}]: {error}") from error


def parse_ntl_info(ntl_info, batch_size: int | None = None) -> PrecomputedLosses | DigitLogProbs | None:
    """Check ``ntl_info`` and return its batched form, or None when it carries no NTL.

    ``batch_size=None`` reads the one-sample forms (scalar loss, ``[L, K]``); an int reads the batched forms
    (B losses, ``[B, T, K]``).
    """
    if ntl_info is None:
        return None
    if not isinstance(ntl_info, Mapping):
        raise ValueError(f"ntl_info must be a dict (or None), got {type(ntl_info).__name__}")
    has_loss, has_log_probs = LOSS_KEY in ntl_info, LOG_PROBS_KEY in ntl_info
    if has_loss and has_log_probs:
        raise ValueError(f"ntl_info has both {LOSS_KEY!r} and {LOG_PROBS_KEY!r}; pass one form")
    if has_loss:
        return _precomputed(ntl_info[LOSS_KEY], batch_size)
    if has_log_probs:
        return _digit_log_probs(ntl_info, batch_size)
    return None
