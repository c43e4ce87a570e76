"""Per-token digit statistics from the actor's logits, and the sequence layout they live in.

verl's engine packs the samples of a micro-batch into one token stream of ``N`` rows (prompt + response of each
sample, back to back). Row ``t`` of the logits predicts token ``t + 1``: verl scores it against
``labels = roll(input_ids, -1)``. Everything here follows that convention, so a per-row statistic lines up with
verl's ``log_probs`` and is cut to the response with the same helpers (``no_padding_2_padding`` /
``response_from_nested``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ntl_kernels import fused_logprob_entropy_ntl

IGNORE_INDEX = -100


class DigitStatistics(NamedTuple):
    """``digit_log_probs [N, K]`` float32 (no grad) and ``ntl [N]`` float32 (differentiable; ``None`` when no
    targets were given). Entry k of a row is the log-probability of number token k among the K number tokens."""

    digit_log_probs: torch.Tensor
    ntl: torch.Tensor | None


def digit_statistics(
    logits: torch.Tensor,
    digit_ids: torch.Tensor,
    *,
    number_values: torch.Tensor | None = None,
    temperature: torch.Tensor,
    ntl_targets: torch.Tensor | None,
    method: str,
    weights: torch.Tensor | None = None,
) -> DigitStatistics:
    """The digit log-probs (for the reward) and the per-row NTL (for the loss) of logits rows.

    The engine's digit pass when it keeps verl's own log-prob/entropy passes (``ntl.fused_actor=false``; the
    default single pass computes everything in one ``fused_logprob_entropy_ntl`` call instead). The K number columns
    are gathered first and handed to ``ntl_kernels.fused_logprob_entropy_ntl``, so the NTL never reads the
    vocabulary (the fused op's log-prob and entropy of these K columns are unused); the gather's backward adds a
    dense ``[N, V]`` gradient to verl's.

    Args:
        logits: ``[N, V]`` raw (not temperature-scaled) logits rows, any floating dtype; ``V`` may be the full
            vocabulary or already only the digit columns.
        digit_ids: ``[K]`` int64 column indices of the number tokens in ``logits`` (the digits 0..9: K = 10).
        number_values: ``[K]`` the tokens' values (None: 0..K-1, the digits).
        temperature: ``[N]`` per-row sampling temperature, floored at 1e-8 as verl does; the digits are scored
            under ``softmax(logits / temperature)``, the distribution the tokens were sampled from.
        ntl_targets: ``[N]`` int64 slot 0..K-1 the row must predict, or -100; ``None`` skips the NTL.
        weights: ``[N]`` float weight of each row's NTL (place weighting), None = 1.
        method: NTL per-row method, one of ``"nll"``, ``"was"``, ``"mse"`` (see ``ntl_kernels.reference``).
    Returns:
        ``DigitStatistics``: ``digit_log_probs = log_softmax(z / T)`` over the K number-token logits ``z``;
        ``ntl[t]`` = the method's value at row t (0 where the target is -100).
    """
    if logits.dim() != 2 or temperature.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [N, V] and temperature [N]; got logits {tuple(logits.shape)}, "
            f"temperature {tuple(temperature.shape)}"
        )
    digit_logits = logits.index_select(-1, digit_ids.to(logits.device))
    own_columns = torch.arange(digit_logits.shape[-1], device=logits.device)
    no_labels = torch.full(logits.shape[:1], IGNORE_INDEX, dtype=torch.long, device=logits.device)
    result = fused_logprob_entropy_ntl(
        digit_logits, no_labels, own_columns, number_values=number_values, temperature=temperature.float(),
        ntl_targets=ntl_targets, weights=weights,
        method=method, ignore_index=IGNORE_INDEX,
    )
    return DigitStatistics(result.digit_log_probs.detach(), result.ntl)


def response_number_tokens(data, number_ids: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` bool: True at the response tokens (``data["responses"]``, nested or padded) that are number
    tokens, False beyond each response. Its True entries, row by row, are the engine's number rows."""
    responses = data["responses"]
    if responses.is_nested:
        responses = torch.nested.to_padded_tensor(responses, IGNORE_INDEX, output_size=(responses.shape[0], width))
        return torch.isin(responses, number_ids.to(responses.device))
    in_response = data["attention_mask"][:, -responses.shape[1]:].bool()  # verl's padded layout
    return torch.isin(responses, number_ids.to(responses.device)) & in_response


def sequence_targets(response_values: torch.Tensor, prompt_lengths: torch.Tensor, fill=IGNORE_INDEX) -> torch.Tensor:
    """Response-aligned per-token values (targets, weights) -> per-row values of the packed stream (verl's label
    convention), ``fill`` on the rows without one.

    Args:
        response_values: nested ``[B, j_response]`` values of each response token (int64 targets, -100 = none;
            float32 weights).
        prompt_lengths: ``[B]`` int64 prompt length of each sample (sample i occupies ``prompt_lengths[i] +
            response_length[i]`` packed rows).
    Returns:
        ``[N]`` of ``response_values``' dtype: row t holds the value of token t + 1, i.e. response token k of a
        sample with prompt length P sits at row ``start + P + k - 1``; prompt rows and each sample's last row hold
        ``fill``.
    """
    rows = []
    for prompt_length, values in zip(prompt_lengths.tolist(), response_values.unbind(), strict=True):
        if prompt_length < 1:
            raise ValueError("every sample needs at least one prompt token: the first response token is "
                             "predicted by the last prompt row")
        rows.append(values.new_full((prompt_length - 1,), fill))
        rows.append(values)
        rows.append(values.new_full((1,), fill))
    return torch.cat(rows)
