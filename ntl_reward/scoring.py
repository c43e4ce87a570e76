"""The two NTL rewards, batched: exact match from the text, the digit loss from ``ntl_info``, ``exp(-L/tau)``.

``final_answer.py`` and ``all_tokens.py`` are the verl-facing entry points; both call ``compute_scores`` here.

Final answer (``mode="final_answer"``, default method ``"confidence"``)::

    score = exp(-L / tau)              (no exact-match requirement; 0 when no NTL is available)

    L is NTL over the number tokens of the final answer (the number after the last ``####``, in the last
    ``\\boxed{}`` or on the last ``Answer:`` line: the format of the sample's ``data_source``, below), with the
    ground-truth digits as targets, aligned by place value: units under units, tenths under tenths.
    Each emitted number token (a digit; with Llama-3 a token of 1-3 digits) covers some places of the answer
    and its target is the token writing the ground truth's digits at those same places, with '0' at a place
    the ground truth lacks (an extra leading digit, an extra trailing decimal), same width as the emitted
    token: ``'123'`` over ground truth 99 -> ``'099'``; ``'12' '34'`` and ``'123' '4'`` over 1234 -> the
    emitted tokens themselves. So the targets depend on how the sampler cut the answer, never on how the
    tokenizer would cut the ground truth, and any cut of the right answer is its own target.
    A ground-truth digit with no answer digit at its place (a shorter or missing answer) still counts as a
    position: one planted row per missing place (whatever token widths would have written those places, so
    the count of missing places is the same on every tokenizer), as if the model gave its target ('0')
    probability 1e-8 (nll, confidence) or put all mass on '9', the maximal single-digit distance, 9 (was; 81
    for mse). Signs are not digits: "-18" vs "18" aligns. Ground truth "18.0" is read as "18" (trailing
    decimal zeros and leading zeros are not required digits).

    L depends on the policy's digit probabilities at the answer positions, not on which digits it sampled there:
    on a weak policy (near-uniform digits) every response that writes an answer scores about the same, right or
    wrong, and GRPO's advantage mostly pays for writing one. ``answer_credit`` (an option beside the specified
    formula, default "none") also credits the sampled answer::

        answer_credit="exact_match":  score = (exp(-L / tau) + EM) / 2
        answer_credit="distance":     score = (exp(-L / tau) + exp(-D / tau)) / 2

    D is the place-value distance of the sampled answer to the ground truth: the mean over the aligned places
    (as for L) of |answer digit - ground-truth digit|, 9 for a ground-truth digit the answer lacks; no answer
    gives credit 0. D = 0 exactly when the answer's digits are the ground truth's (leading zeros aside).

All tokens (``mode="all_tokens"``, default method ``"nll"``)::

    score = EM * exp(-L / tau)         (EM when no ntl_info is given: validation, where verl scores the rollout)

    L is NTL over every number token of the response, each with the generated token as its target.

``place_weighting`` (both modes, default "none"): L's positions weighted by the place of each token's most
significant digit, ``"place"``: w = 1 + max(place, 0) (``ntl_reward.place_value``); a planted row weighs as its
missing place.

Answer formats (``formats.py``): the rewards route by ``data_source`` as verl 0.9.1's ``default_compute_score``
does: ``openai/gsm8k`` and unknown sources the GSM8K rule (``answer.py``); ``lighteval/MATH``,
``DigitalLearningGmbH/MATH-lighteval``, ``HuggingFaceH4/MATH-500`` the last ``\\boxed{...}``; ``math_dapo``,
``math``, ``math_dapo_reasoning``, ``aime*`` the last ``Answer:`` line, else the last box. One answer per response
(the last), EM pays what verl's scorer for the source pays on a one-answer response and answers equal to the
ground truth by value. NTL reads the digits of the number inside the answer (``\\boxed{\\$1{,}234}``: "1234").
An answer that is no number (``\\frac{1}{2}``) has no digits to score: status ``"answer_not_a_number"``, no
``ntl_loss``, and the score is EM (verl's verdict) in both modes, whatever ``ntl_info`` holds (it is not read).
Final mode's ground truth that is no number (``"ground_truth_not_a_number"``) scores EM too (for GSM8K that is
always 0, as before: its answers are numbers).

L comes from ``ntl_info`` (see ``ntl_info.py``): precomputed, or computed here with ``ntl_kernels.ntl_loss``
from the response's digit log-probabilities (one call per batch).

Broken NTL input scores 0 in both modes, whatever the answer and ``answer_credit`` (an answer that is no number
aside: its NTL input is not read): it must never pay more than a healthy response. That is a precomputed loss
that is NaN, infinite or negative (status ``"invalid_loss"``),
digit log-probs giving a NaN or infinite loss (``"non_finite"``, e.g. a NaN or +inf log-prob, or -inf at a
scored digit; the result's ``ntl_non_finite`` is 1, so its mean is the rate), and digit tokens that do not match
the text's digits (``"digit_count_mismatch"``, e.g. wrong ``digit_ids``). Only ``ntl_info`` absent (or without an
NTL field, or ``ntl_loss=None``) leaves All mode its exact-match score.

Locating the final answer's tokens: the answer is found in the text, and its digits are mapped to number tokens
by order: the k-th number token of the response covers the next len(text_k) ASCII digits of the response text
(``ntl_info``'s ``number_texts``; the digits: one each). This holds when the only tokens containing ASCII digits
are the number tokens — true for Qwen2.5 (only the ten digits) and Llama-3 (its pre-tokenizer puts every run of
digits in pieces of 1-3 digits of their own). It needs no tokenizer and covers every way ``####`` tokenizes
(``"####"``, ``" ####"``, ``"#####"``, ``"####186"``, ``"\\n#### 18"``). When the text's digit count differs
from the sum of the number tokens' lengths, or a token would straddle the answer's first or last digit (the ids
are not this text's, or the model emitted a number token of another tokenizer), the mapping is not trusted and
the status is ``"digit_count_mismatch"`` (score 0) rather than a guessed loss. All mode checks the same count:
its L would otherwise score other tokens than the text's digits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from ntl_kernels import CONFIDENCE_FLOOR, NUM_DIGITS, NumberTokens, ntl_loss, number_targets
from ntl_kernels.checks import check_method
from ntl_kernels.tokens import DIGIT_TEXTS, MAX_NUMBER_TOKEN_DIGITS

from .answer import Answer, DecimalDigits, decimal_digits
from .formats import answer_format, extract_final_answer, is_correct_answer, truth_digits
from .ntl_info import DigitLogProbs, PrecomputedLosses, parse_ntl_info
from .place_value import check_place_weighting, number_token_places, place_weights

MODES = ("final_answer", "all_tokens")
ANSWER_CREDITS = ("none", "exact_match", "distance")
DEFAULT_METHODS = {"final_answer": "confidence", "all_tokens": "nll"}
IGNORE = -100
# Status of the NTL term of one sample, as reported in the result's "ntl_status".
OK = "ok"
MISSING = "missing"  # no ntl_info, or one without an NTL field, or ntl_loss=None
INVALID_LOSS = "invalid_loss"  # a precomputed loss that is NaN, infinite or negative
NON_FINITE = "non_finite"  # the loss computed from digit_log_probs is NaN or infinite (NaN/-inf inputs)
NO_DIGITS = "no_digit_positions"  # all-tokens: the response has no digit token to score
DIGIT_COUNT_MISMATCH = "digit_count_mismatch"  # text digits != digit tokens: the tokens are not the text's
GROUND_TRUTH_NOT_A_NUMBER = "ground_truth_not_a_number"  # final answer: no digits to align with
ANSWER_NOT_A_NUMBER = "answer_not_a_number"  # a math-format answer that is no number ("\\frac{1}{2}"): no NTL
# No digits to score: the sample's score is its exact match, verl's verdict (module docstring).
NOT_A_NUMBER = (GROUND_TRUTH_NOT_A_NUMBER, ANSWER_NOT_A_NUMBER)
# NTL input given but broken: the sample scores 0 in both modes (module docstring).
BROKEN = (INVALID_LOSS, NON_FINITE, DIGIT_COUNT_MISMATCH)


def check_tau(tau, name: str = "tau") -> float:
    """``tau`` as a float; ValueError naming ``name`` and the value unless it is a positive finite real number
    (a bool, a string, None, NaN, +-inf, 0, a negative number or one whose float is 0 or inf are refused)."""
    try:
        value = float(tau) if isinstance(tau, numbers.Real) and not isinstance(tau, bool) else math.nan
    except OverflowError:  # an int beyond float range
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {tau!r:.80}")
    return value


def _result(*, score, exact_match, loss, pred, status, digits, missing_digits, tau) -> dict:
    """One sample's reward dict; every sample has every key, and no value is None, so every verl release can log
    them as columns (verl 0.7 - 0.9.0 average every non-string column with numpy, None included: a crash).
    Without an NTL term ``ntl_loss`` is 0.0 and ``ntl_available`` 0; without an answer ``pred`` is ""."""
    return {
        "score": score,
        "exact_match": int(exact_match),
        "ntl_loss": 0.0 if loss is None else loss,
        "pred": "" if pred is None else pred,
        "ntl_available": int(loss is not None),
        "ntl_status": status,
        "ntl_non_finite": int(status == NON_FINITE),  # its batch mean: the rate of NaN/inf digit log-probs
        "ntl_digits": digits,  # digit positions of the response that entered L
        "ntl_missing_digits": missing_digits,  # final answer: ground-truth digits with no emitted position
        "tau": tau,
    }


def _count_digits(text: str) -> int:
    return sum(map(text.count, "0123456789"))


def _truth_places(truth: DecimalDigits) -> dict[int, int]:
    """The ground truth's digit at each place, leading integer and trailing decimal zeros not required:
    ``("", "012", "50")`` -> {1: 1, 0: 2, -1: 5} (place 0 the units, 1 the tens, -1 the tenths)."""
    integer, fraction = truth.integer.lstrip("0") or "0", truth.fraction.rstrip("0")
    places = {len(integer) - 1 - i: int(d) for i, d in enumerate(integer)}
    places.update({-1 - i: int(d) for i, d in enumerate(fraction)})
    return places


def _index_of_place(digits: DecimalDigits, place: int) -> int | None:
    """Where ``place`` falls in ``digits.integer + digits.fraction`` (text order), None if the number has no digit
    there: ``("", "12", "5")``: place 1 -> 0, place -1 -> 2, place 2 -> None.

    Alignment works from the ground truth's few places, so a runaway answer of a million digits costs
    O(its length) in C string operations, never a Python object per digit."""
    if place >= 0:
        index = len(digits.integer) - 1 - place
        return index if index >= 0 else None
    return len(digits.integer) - 1 - place if -1 - place < len(digits.fraction) else None


class _AnswerRows(NamedTuple):
    """Final-answer rows of one sample.

    ``positions``: the answer's number-token positions (a list, or a 1-D tensor when given one); ``widths``: their
    digit counts (1-D int64 tensor); ``aligned``: index into ``positions`` -> target slot for the tokens covering a
    ground-truth place (sparse: every other token's target is the all-zeros token of its width, ``'0'`` /
    ``'000'``); ``missing_places``: the places of ground-truth digits with no emitted token, one planted row each;
    ``places``: the place of each token's most significant digit (1-D int64 tensor). Sparse, so a runaway answer
    of a million digits costs no Python object per digit."""

    positions: Sequence[int]
    widths: torch.Tensor
    aligned: dict[int, int]
    missing_places: list[int]
    places: torch.Tensor

    def targets(self, numbers: NumberTokens) -> torch.Tensor:
        """The target slot of every position, in order (int64 ``[len(positions)]``)."""
        targets = _zero_slots(numbers)[self.widths]
        for index, slot in self.aligned.items():
            targets[index] = slot
        return targets


def _zero_slots(numbers: NumberTokens) -> torch.Tensor:
    """int64 ``[4]``: entry w is the slot of the all-zeros token of width w (``'00'``), -1 where the set has none."""
    return torch.tensor([numbers.slot("0" * width) if numbers.slot("0" * width) is not None else -1
                         for width in range(MAX_NUMBER_TOKEN_DIGITS + 1)], dtype=torch.long)


def _widths(numbers: NumberTokens) -> torch.Tensor:
    """int64 ``[K]``: the digit count of each slot's text."""
    return torch.tensor([len(text) for text in numbers.texts], dtype=torch.long)


def _final_answer_rows(
    response: str, answer: Answer | None, truth: DecimalDigits, number_positions: Sequence[int],
    widths: torch.Tensor, numbers: NumberTokens,
) -> _AnswerRows | None:
    """Align the answer's number tokens with the ground truth by place value; None if the tokens can't be located.

    ``number_positions``: the response's number-token positions in order; ``widths``: their digit counts (int64
    1-D tensor). The k-th token covers the next ``widths[k]`` ASCII digits of the text: their total must be the
    text's digit count, and the answer's digits must be whole tokens.
    """
    ends = widths.cumsum(0)  # digits of the text up to and including token k
    if not isinstance(response, str) or _count_digits(response) != (int(ends[-1]) if len(ends) else 0):
        return None
    truth_places = _truth_places(truth)
    emitted = decimal_digits(answer.text) if answer is not None else None
    if emitted is None:  # no answer, or not a plain number ("1.2.3"): nothing emitted at any place
        return _AnswerRows(number_positions[:0], widths[:0], {}, sorted(truth_places, reverse=True), widths[:0])
    first = _count_digits(response[: answer.start])
    length = len(emitted.integer) + len(emitted.fraction)
    first_token, end_token = torch.searchsorted(ends, torch.tensor([first, first + length]), right=True).tolist()
    starts_at_a_token = (int(ends[first_token - 1]) if first_token else 0) == first
    if not starts_at_a_token or end_token == 0 or int(ends[end_token - 1]) != first + length:
        return None  # a token spans the answer's first or last digit and the text around it: not this text's tokens
    widths = widths[first_token:end_token]
    answer_ends = ends[first_token:end_token] - first  # answer digits up to and including each answer token
    starts = answer_ends - widths  # index of each token's first digit in emitted.integer + emitted.fraction
    target_texts, missing_places = {}, []  # answer token -> its target digits; tokens at no truth place: all 0
    for place, truth_digit in truth_places.items():
        index = _index_of_place(emitted, place)
        if index is None:
            missing_places.append(place)
            continue
        token = int(torch.searchsorted(answer_ends, index, right=True))
        digits = target_texts.setdefault(token, ["0"] * int(widths[token]))
        digits[index - int(starts[token])] = str(truth_digit)
    aligned = {token: numbers.slot("".join(digits)) for token, digits in target_texts.items()}
    places = len(emitted.integer) - 1 - starts
    return _AnswerRows(number_positions[first_token:end_token], widths, aligned, missing_places, places)


def answer_distance(answer: str | None, truth: DecimalDigits) -> float | None:
    """Place-value distance of an answer to the ground truth: mean |answer digit - truth digit| over the places of
    either (a place the truth lacks has truth digit 0; a truth digit the answer lacks counts 9); None without a
    plain-number answer. ``"19"`` vs 18 -> 0.5, ``"118"`` vs 18 -> 1/3, ``"8"`` vs 18 -> 4.5."""
    emitted = decimal_digits(answer)
    if emitted is None:
        return None
    digits = emitted.integer + emitted.fraction
    total = sum(int(d) * digits.count(d) for d in "123456789")  # |digit - 0| at every answer place, then fix
    places = len(digits)  # the ground truth's places up below
    for place, truth_digit in _truth_places(truth).items():
        index = _index_of_place(emitted, place)
        if index is None:
            total, places = total + NUM_DIGITS - 1, places + 1
        else:
            total += abs(int(digits[index]) - truth_digit) - int(digits[index])
    return total / places


def _answer_rows_of(response_text, positions, ground_truth, number_texts, position_slots, data_source):
    """``_final_answer_rows`` for the verl loss's arguments (``final_answer_targets``), with the set; rows None when
    the answer can't be located, is no number, or the ground truth is not a number."""
    numbers = NumberTokens(torch.arange(len(number_texts)), tuple(number_texts))
    positions = [int(position) for position in positions]
    if position_slots is None:
        widths = torch.ones(len(positions), dtype=torch.long)
    else:
        slots = torch.as_tensor(position_slots, dtype=torch.long).reshape(-1)
        if len(slots) != len(positions) or bool(((slots < 0) | (slots >= len(numbers))).any()):
            raise ValueError(
                f"position_slots must hold one slot in 0..{len(numbers) - 1} per position ({len(positions)}), "
                f"got {slots.tolist()!r:.120}"
            )
        widths = _widths(numbers)[slots]
    answer_style = answer_format(data_source)
    truth = truth_digits(ground_truth, answer_style)
    final = extract_final_answer(response_text, answer_style)
    if truth is None or (final is not None and final.number is None):
        return numbers, None
    answer = final.number if final is not None else None
    return numbers, _final_answer_rows(response_text, answer, truth, positions, widths, numbers)


def final_answer_targets(
    response_text: str, response_digit_positions: Sequence[int], ground_truth, *,
    number_texts: Sequence[str] = DIGIT_TEXTS, position_slots: Sequence[int] | None = None, data_source=None,
) -> dict[int, int]:
    """Final-answer number-token positions -> target slot, aligned by place value exactly as the Final reward does.

    Args:
        response_text: the decoded response.
        response_digit_positions: the response token positions holding number tokens, in order.
        ground_truth: the dataset answer.
        number_texts: the number-token set's K texts (slot i writes ``number_texts[i]``); default the 10 digits.
        position_slots: the slot of each position's token (``ntl_kernels.number_targets``); None = every token
            is one digit (digit-by-digit tokenizers).
        data_source: verl's data source of the sample: the answer format (``ntl_reward.formats``; None: GSM8K).
    Returns:
        ``{position: slot}``: each answer token's target is the token writing the ground truth's digits at its
        places ('0' where the ground truth has none: ``'123'`` over 99 -> ``'099'``). Empty when the answer can't
        be located, is no number, or the ground truth is not a number. The NTL actor loss uses this so it scores the same
        positions as the reward (the reward's planted rows for missing places have no position here).
    Raises:
        ValueError: ``position_slots`` not one valid slot per position, ``number_texts`` not a number-token set.
    """
    numbers, rows = _answer_rows_of(response_text, response_digit_positions, ground_truth, number_texts,
                                    position_slots, data_source)
    return {} if rows is None else dict(zip(rows.positions, rows.targets(numbers).tolist(), strict=True))


def final_answer_places(
    response_text: str, response_digit_positions: Sequence[int], ground_truth, *,
    number_texts: Sequence[str] = DIGIT_TEXTS, position_slots: Sequence[int] | None = None, data_source=None,
) -> dict[int, int]:
    """The same positions as ``final_answer_targets`` -> the place of each token's most significant digit (0 the
    units, -1 the tenths), for ``ntl_reward.place_weights``."""
    _, rows = _answer_rows_of(response_text, response_digit_positions, ground_truth, number_texts, position_slots,
                              data_source)
    return {} if rows is None else dict(zip(rows.positions, rows.places.tolist(), strict=True))


def _missing_digit_row(method: str, dtype: torch.dtype, device, numbers: NumberTokens) -> torch.Tensor:
    """The ``[K]`` number-token log-probs of a ground-truth digit with no emitted position, for target ``'0'``.

    nll/confidence: p('0') = 1e-8 (the rest spread evenly); was/mse: all mass on ``'9'``, distance 9 (81 squared),
    the largest a single digit can be off, whatever K.
    """
    size = len(numbers)
    if method in ("nll", "confidence"):
        row = torch.full((size,), math.log((1 - CONFIDENCE_FLOOR) / (size - 1)), dtype=dtype)
        row[numbers.slot("0")] = math.log(CONFIDENCE_FLOOR)
    else:
        row = torch.full((size,), -math.inf, dtype=dtype)
        row[numbers.slot("9")] = 0.0
    return row.to(device)


def _loss_options(numbers: NumberTokens, device, weights: torch.Tensor | None) -> dict:
    """``ntl_loss``'s keyword arguments beyond K = 10 digits unweighted (left out there: today's call exactly)."""
    options = {} if numbers.is_digits else {"number_values": numbers.values.to(device)}
    if weights is not None:
        options["weights"] = weights.to(device)
    return options


def _final_answer_losses(
    info: DigitLogProbs, responses, answers, truths, method: str, place_weighting: str = "none"
) -> tuple[list, list[str], list[int], list[int]]:
    """Per sample: (loss or None, status, scored number-token positions, missing ground-truth digits)."""
    batch, numbers = len(responses), info.numbers
    slots = number_targets(info.response_ids, info.digit_ids, IGNORE).masked_fill(~info.mask, IGNORE).cpu()
    width_of_slot = _widths(numbers)
    statuses, rows = [], []
    for b in range(batch):
        sample_rows = None
        if truths[b] is None:
            statuses.append(GROUND_TRUTH_NOT_A_NUMBER)
        else:
            positions = (slots[b] != IGNORE).nonzero().squeeze(-1)
            widths = width_of_slot[slots[b, positions]]
            sample_rows = _final_answer_rows(responses[b], answers[b], truths[b], positions, widths, numbers)
            statuses.append(OK if sample_rows is not None else DIGIT_COUNT_MISMATCH)
        rows.append(sample_rows)

    # One [B, W, K] gather of the answer rows, then one ntl_loss call; missing digits are planted rows.
    width = max(1, max([len(r.positions) + len(r.missing_places) for r in rows if r is not None], default=0))
    index = torch.zeros(batch, width, dtype=torch.long)
    row_targets = torch.full((batch, width), IGNORE, dtype=torch.long)
    is_missing = torch.zeros(batch, width, dtype=torch.bool)
    row_places = torch.zeros(batch, width, dtype=torch.long)
    for b, r in enumerate(rows):
        if r is None:
            continue
        n, m = len(r.positions), len(r.missing_places)
        index[b, :n] = r.positions
        row_targets[b, :n] = r.targets(numbers)
        row_targets[b, n : n + m] = numbers.slot("0")
        is_missing[b, n : n + m] = True
        row_places[b, :n] = r.places
        row_places[b, n : n + m] = torch.tensor(r.missing_places, dtype=torch.long)
    device = info.log_probs.device
    dtype = torch.float64 if info.log_probs.dtype == torch.float64 else torch.float32
    # Empty responses still get their planted rows: gather them from one dummy row.
    source = info.log_probs if info.log_probs.shape[1] else info.log_probs.new_zeros(batch, 1, len(numbers))
    gathered = source.gather(1, index.to(device).unsqueeze(-1).expand(-1, -1, len(numbers))).to(dtype)
    planted = _missing_digit_row(method, dtype, device, numbers)
    gathered = torch.where(is_missing.to(device).unsqueeze(-1), planted, gathered)
    weights = place_weights(row_places, place_weighting) if place_weighting != "none" else None
    result = ntl_loss(
        gathered, row_targets.to(device), torch.arange(len(numbers), device=device),
        method=method, reduction="sample", return_counts=True, **_loss_options(numbers, device, weights),
    )
    losses, counts = result.loss.tolist(), result.counts.tolist()
    out_losses, emitted, missing = [], [], []
    for b, r in enumerate(rows):
        emitted.append(len(r.positions) if r is not None else 0)
        missing.append(len(r.missing_places) if r is not None else 0)
        if r is None or counts[b] == 0:
            out_losses.append(None)
        elif not math.isfinite(losses[b]):
            out_losses.append(None)
            statuses[b] = NON_FINITE
        else:
            out_losses.append(losses[b])
    return out_losses, statuses, emitted, missing


def _all_tokens_losses(
    info: DigitLogProbs, responses, method: str, place_weighting: str = "none"
) -> tuple[list, list[str], list[int], list[int]]:
    """Per sample: (loss or None, status, scored number-token positions, 0) over every number token of the
    response, each its own target."""
    batch, numbers = info.log_probs.shape[0], info.numbers
    targets = number_targets(info.response_ids, info.digit_ids, IGNORE).masked_fill(~info.mask, IGNORE)
    # Only the token columns with a number token in some sample enter ntl_loss: the rest are ignored rows anyway,
    # and a runaway response (1 MiB of ",") has few or none.
    number_columns = (targets != IGNORE).any(0).nonzero().squeeze(-1)
    targets = targets[:, number_columns]
    width_of_slot = _widths(numbers).to(targets.device)
    digits = torch.where(targets != IGNORE, width_of_slot[targets.clamp(min=0)], 0).sum(-1).tolist()
    statuses = []
    for digit_count, response in zip(digits, responses):
        statuses.append(OK if digit_count == (_count_digits(response) if isinstance(response, str) else 0)
                        else DIGIT_COUNT_MISMATCH)
    weights = None
    if place_weighting != "none" and number_columns.numel():
        places = torch.zeros(targets.shape, dtype=torch.long)
        for b in range(batch):
            scored = (targets[b] != IGNORE).cpu()
            token_places = number_token_places(responses[b], width_of_slot.cpu()[targets[b].cpu()[scored]])
            if token_places is None:  # the tokens cross the text's numbers: not this text's tokens
                statuses[b] = DIGIT_COUNT_MISMATCH
            else:
                places[b, scored] = torch.tensor(token_places, dtype=torch.long)
        weights = place_weights(places, place_weighting)
    if number_columns.numel() == 0:  # no number token at all (empty responses too): nothing to score
        losses, counts = [math.nan] * batch, [0] * batch
    else:
        result = ntl_loss(
            info.log_probs[:, number_columns], targets, torch.arange(len(numbers), device=info.log_probs.device),
            method=method, reduction="sample", return_counts=True,
            **_loss_options(numbers, info.log_probs.device, weights),
        )
        losses, counts = result.loss.tolist(), result.counts.tolist()
    out_losses = []
    for b, (loss, count) in enumerate(zip(losses, counts)):
        if statuses[b] == OK:
            statuses[b] = NO_DIGITS if count == 0 else OK if math.isfinite(loss) else NON_FINITE
        out_losses.append(loss if statuses[b] == OK else None)
    return out_losses, statuses, counts, [0] * batch


def compute_scores(
    mode: str,
    solution_strs: Sequence[str],
    ground_truths: Sequence,
    ntl_info=None,
    *,
    data_sources=None,
    tau=1.0,
    method: str | None = None,
    extraction: str = "strict",
    answer_credit: str = "none",
    place_weighting: str = "none",
) -> list[dict]:
    """Rewards of a batch of B responses, one dict per sample (keys as ``compute_score``'s).

    Args:
        mode: ``"final_answer"`` or ``"all_tokens"`` (formulas in the module docstring).
        solution_strs: B decoded responses (prompt excluded), as verl passes ``solution_str``.
        ground_truths: B ground-truth answers (str; int/float and numpy scalars accepted).
        ntl_info: None, or the batched form of ``ntl_info.py``: ``{"ntl_loss": [B]}``, or
            ``{"digit_log_probs": [B, T, 10], "response_ids": [B, T], "digit_ids": [10],
            "response_mask": [B, T] (optional)}`` — verl's padded response tensors as they are.
        data_sources: verl's ``data_source`` of each sample (B values, or one for the whole batch; None: GSM8K):
            the answer format, routed as verl's ``default_compute_score`` does (``ntl_reward.formats``).
        tau: positive finite temperature of ``exp(-L / tau)``.
        method: NTL method (``ntl_kernels.METHODS``); default ``"confidence"`` (final) / ``"nll"`` (all).
        extraction: GSM8K's rule: ``"strict"`` (number after the last ``####``) or ``"flexible"`` (last number).
        answer_credit: final_answer only: ``"none"`` (``exp(-L/tau)``), ``"exact_match"`` or ``"distance"``
            (also credit the sampled answer; module docstring).
        place_weighting: ``"none"`` or ``"place"``: weights of L's positions by place value
            (``ntl_reward.place_value``).
    Raises:
        ValueError: bad mode, tau, method, extraction, lengths (data_sources too) or ``ntl_info`` structure.
            Malformed response text never raises.
    """
    if len(solution_strs) != len(ground_truths):
        raise ValueError(f"got {len(solution_strs)} solution_strs but {len(ground_truths)} ground_truths")
    if data_sources is None or isinstance(data_sources, str):
        data_sources = [data_sources] * len(solution_strs)
    elif len(data_sources) != len(solution_strs):
        raise ValueError(f"got {len(solution_strs)} solution_strs but {len(data_sources)} data_sources")
    info = parse_ntl_info(ntl_info, batch_size=len(solution_strs))
    return _score_batch(mode, solution_strs, ground_truths, info, tau, method, extraction, answer_credit,
                        data_sources, place_weighting)


def compute_score(
    mode: str, solution_str, ground_truth, ntl_info=None, *, data_source=None, extra_info=None, tau=1.0, method=None,
    extraction="strict", answer_credit="none", place_weighting="none",
) -> dict:
    """One sample's reward dict; ``ntl_info`` in its one-sample form (scalar loss, or ``[L, 10]`` / ``[L]``).

    verl's reward managers pass only ``data_source, solution_str, ground_truth, extra_info``, so when
    ``ntl_info`` is None it is read from ``extra_info["ntl_info"]``. ``data_source`` picks the answer format
    (``ntl_reward.formats``; None: GSM8K).
    """
    if ntl_info is None and isinstance(extra_info, Mapping):
        ntl_info = extra_info.get("ntl_info")
    info = parse_ntl_info(ntl_info, batch_size=None)
    return _score_batch(
        mode, [solution_str], [ground_truth], info, tau, method, extraction, answer_credit, [data_source],
        place_weighting,
    )[0]


def _answer_credits(answer_credit: str, preds, exact, truths, tau: float) -> list[float]:
    """Final mode's credit for the sampled answer, per sample (see the module docstring); ``truths`` the ground
    truths' digits (None: not a number, credit 0)."""
    if answer_credit == "exact_match":
        return [float(e) for e in exact]
    credits = []
    for pred, truth in zip(preds, truths):
        distance = answer_distance(pred, truth) if truth is not None else None
        credits.append(math.exp(-distance / tau) if distance is not None else 0.0)
    return credits


def _score_batch(mode, solution_strs, ground_truths, info, tau, method, extraction, answer_credit="none",
                 data_sources=None, place_weighting="none") -> list[dict]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if answer_credit not in ANSWER_CREDITS:
        raise ValueError(f"answer_credit must be one of {ANSWER_CREDITS}, got {answer_credit!r}")
    if answer_credit != "none" and mode != "final_answer":
        raise ValueError(f"answer_credit={answer_credit!r} is an option of the final_answer mode, not {mode!r}")
    tau = check_tau(tau)
    check_place_weighting(place_weighting)
    method = DEFAULT_METHODS[mode] if method is None else method
    check_method(method)
    batch = len(solution_strs)
    formats = [answer_format(source) for source in (data_sources or [None] * batch)]
    finals = [extract_final_answer(text, fmt, extraction) for text, fmt in zip(solution_strs, formats)]
    # The number each answer is, located on its digits (None: no answer, or not a number): what NTL reads.
    answers = [final.number if final is not None else None for final in finals]
    not_a_number = [final is not None and final.number is None for final in finals]
    preds = [answer.text if answer is not None else final.text if final is not None else None
             for answer, final in zip(answers, finals)]
    exact = [is_correct_answer(final, truth, fmt) for final, truth, fmt in zip(finals, ground_truths, formats)]
    truths = [truth_digits(truth, fmt) for truth, fmt in zip(ground_truths, formats)]

    if info is None:
        losses, statuses, digits, missing = [None] * batch, [MISSING] * batch, [0] * batch, [0] * batch
    elif isinstance(info, PrecomputedLosses):
        losses, digits, missing = list(info.losses), [0] * batch, [0] * batch
        statuses = [OK if loss is not None else INVALID_LOSS if bad else MISSING
                    for loss, bad in zip(info.losses, info.invalid)]
    elif mode == "final_answer":  # an answer that is no number has no digits to align: none are read
        aligned_truths = [None if skip else truth for truth, skip in zip(truths, not_a_number)]
        losses, statuses, digits, missing = _final_answer_losses(
            info, solution_strs, answers, aligned_truths, method, place_weighting
        )
    else:
        losses, statuses, digits, missing = _all_tokens_losses(info, solution_strs, method, place_weighting)
    for b in range(batch):  # no NTL for an answer that is no number, whatever ntl_info holds: verl's verdict alone
        if not_a_number[b]:
            losses[b], statuses[b], digits[b], missing[b] = None, ANSWER_NOT_A_NUMBER, 0, 0

    credits = _answer_credits(answer_credit, preds, exact, truths, tau) if answer_credit != "none" else None
    results = []
    for b in range(batch):
        quality = math.exp(-losses[b] / tau) if losses[b] is not None else None
        if statuses[b] in BROKEN:
            score = 0.0
        elif statuses[b] in NOT_A_NUMBER:
            score = float(exact[b])
        elif mode == "final_answer":
            score = quality if quality is not None else 0.0
            if credits is not None:
                score = (score + credits[b]) / 2
        else:
            score = float(exact[b]) * (quality if quality is not None else 1.0)
        results.append(
            _result(
                score=score, exact_match=exact[b], loss=losses[b], pred=preds[b], status=statuses[b],
                digits=digits[b], missing_digits=missing[b], tau=tau,
            )
        )
    return results
