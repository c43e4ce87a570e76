"""The two NTL rewards, batched: exact match from the text, the digit loss from ``ntl_info``, ``exp(-L/tau)``.

``final_answer.py`` and ``all_tokens.py`` are the verl-facing entry points; both call ``compute_scores`` here.

Final answer (``mode="final_answer"``, default method ``"confidence"``)::

    score = exp(-L / tau)              (no exact-match requirement; 0 when no NTL is available)

    L is NTL over the digit tokens of the final answer (the number after the last ``####``, in the last
    ``\\boxed{}`` or on the last ``Answer:`` line: the format of the sample's ``data_source``, below), with the
    ground-truth digits as targets, aligned by place value: units under units, tenths under tenths.
    An answer digit at a place the ground truth lacks (an extra leading digit, an extra trailing decimal)
    has target 0. A ground-truth digit with no answer digit at its place (a shorter or missing answer)
    still counts as a position, as if the model gave its digit probability 1e-8 (nll, confidence) or put
    all mass at the maximal distance, 9 (was; 81 for mse). Signs are not digits: "-18" vs "18" aligns.
    Ground truth "18.0" is read as "18" (trailing decimal zeros and leading zeros are not required digits).

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

    L is NTL over every digit token of the response, each with the generated digit as its target.

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

Locating the final answer's tokens: the answer is found in the text, and its digits are mapped to digit tokens
by order: the k-th ASCII digit of the response text is the k-th digit token of the response. This holds when
the only tokens containing ASCII digits are the ten single-digit tokens — true for Qwen2.5 (its vocabulary has
no other token containing an ASCII digit; digits are always split). It needs no tokenizer and covers every way
``####`` tokenizes (``"####"``, ``" ####"``, ``"#####"``, ``"####186"``, ``"\\n#### 18"``). When the text's
digit count differs from the response's digit-token count (the ids are not this text's, or the model emitted
a multi-digit token of another tokenizer), the mapping is not trusted and the status is
``"digit_count_mismatch"`` (score 0) rather than a guessed loss. All mode checks the same count: its L would
otherwise score other tokens than the text's digits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from ntl_kernels import CONFIDENCE_FLOOR, NUM_DIGITS, digit_targets, ntl_loss
from ntl_kernels.checks import check_method

from .answer import Answer, DecimalDigits, decimal_digits, extract_answer, ground_truth_text
from .formats import answer_format, extract_final_answer, is_correct_answer, truth_digits
from .ntl_info import DigitLogProbs, PrecomputedLosses, parse_ntl_info

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
    """One sample's reward dict; every sample has every key, so verl can log them as columns."""
    return {
        "score": score,
        "exact_match": int(exact_match),
        "ntl_loss": loss,
        "pred": pred,
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
    """Final-answer rows of one sample: the answer's digit-token positions (a list, or a 1-D tensor when given one),
    the targets, sparse (``aligned``: index into ``positions`` -> ground-truth digit; every other position has
    target 0), and the count of ground-truth digits with no position. Sparse, so a runaway answer of a million
    digits costs no Python object per digit."""

    positions: Sequence[int]
    aligned: dict[int, int]
    missing: int

    def targets(self) -> list[int]:
        """The target of every position, in order."""
        targets = [0] * len(self.positions)
        for index, digit in self.aligned.items():
            targets[index] = digit
        return targets


def _final_answer_rows(
    response: str, answer: Answer | None, truth: DecimalDigits, digit_positions: Sequence[int]
) -> _AnswerRows | None:
    """Align the answer's digit tokens with the ground truth by place value; None if the tokens can't be located."""
    if not isinstance(response, str) or _count_digits(response) != len(digit_positions):
        return None
    truth_places = _truth_places(truth)
    emitted = decimal_digits(answer.text) if answer is not None else None
    if emitted is None:  # no answer, or not a plain number ("1.2.3"): nothing emitted at any place
        return _AnswerRows(digit_positions[:0], {}, len(truth_places))
    first = _count_digits(response[: answer.start])
    length = len(emitted.integer) + len(emitted.fraction)
    positions = digit_positions[first : first + length]
    aligned, missing = {}, 0  # answer digits at places the ground truth lacks: target 0
    for place, truth_digit in truth_places.items():
        index = _index_of_place(emitted, place)
        if index is None:
            missing += 1
        else:
            aligned[index] = truth_digit
    return _AnswerRows(positions, aligned, missing)


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


def final_answer_targets(response_text: str, response_digit_positions: list[int], ground_truth) -> dict[int, int]:
    """Final-answer digit positions -> ground-truth digit, aligned by place value exactly as the Final reward does.

    ``response_digit_positions`` are the response token positions holding digit tokens, in order. Positions of
    extra leading digits get target 0; the result is empty when the answer can't be located or the ground
    truth is not a number. The NTL actor loss uses this so it scores the same positions as the reward.
    """
    truth = decimal_digits(ground_truth_text(ground_truth))
    if truth is None:
        return {}
    answer = extract_answer(response_text, "strict") if isinstance(response_text, str) else None
    rows = _final_answer_rows(response_text, answer, truth, response_digit_positions)
    return {} if rows is None else dict(zip(rows.positions, rows.targets(), strict=True))


def _missing_digit_row(method: str, dtype: torch.dtype, device) -> torch.Tensor:
    """The digit log-probs of a ground-truth digit with no emitted position, for target 0.

    nll/confidence: p(target) = 1e-8 (the rest spread evenly); was/mse: all mass on 9, distance 9 (81 squared).
    """
    if method in ("nll", "confidence"):
        row = torch.full((NUM_DIGITS,), math.log((1 - CONFIDENCE_FLOOR) / (NUM_DIGITS - 1)), dtype=dtype)
        row[0] = math.log(CONFIDENCE_FLOOR)
    else:
        row = torch.full((NUM_DIGITS,), -math.inf, dtype=dtype)
        row[NUM_DIGITS - 1] = 0.0
    return row.to(device)


def _final_answer_losses(
    info: DigitLogProbs, responses, answers, truths, method: str
) -> tuple[list, list[str], list[int], list[int]]:
    """Per sample: (loss or None, status, scored digit positions, missing ground-truth digits)."""
    batch = len(responses)
    targets = digit_targets(info.response_ids, info.digit_ids, IGNORE).masked_fill(~info.mask, IGNORE)
    is_digit = (targets != IGNORE).cpu()
    statuses, rows = [], []
    for b in range(batch):
        sample_rows = None
        if truths[b] is None:
            statuses.append(GROUND_TRUTH_NOT_A_NUMBER)
        else:
            positions = is_digit[b].nonzero().squeeze(-1)
            sample_rows = _final_answer_rows(responses[b], answers[b], truths[b], positions)
            statuses.append(OK if sample_rows is not None else DIGIT_COUNT_MISMATCH)
        rows.append(sample_rows)

    # One [B, K, 10] gather of the answer rows, then one ntl_loss call; missing digits are planted rows.
    width = max([len(r.positions) + r.missing for r in rows if r is not None], default=0)
    index = torch.zeros(batch, max(width, 1), dtype=torch.long)
    row_targets = torch.full((batch, max(width, 1)), IGNORE, dtype=torch.long)
    is_missing = torch.zeros(batch, max(width, 1), dtype=torch.bool)
    for b, r in enumerate(rows):
        if r is None:
            continue
        n = len(r.positions)
        index[b, :n] = r.positions
        row_targets[b, :n] = 0
        for answer_index, digit in r.aligned.items():
            row_targets[b, answer_index] = digit
        row_targets[b, n : n + r.missing] = 0
        is_missing[b, n : n + r.missing] = True
    device = info.log_probs.device
    dtype = torch.float64 if info.log_probs.dtype == torch.float64 else torch.float32
    # Empty responses still get their planted rows: gather them from one dummy row.
    source = info.log_probs if info.log_probs.shape[1] else info.log_probs.new_zeros(batch, 1, NUM_DIGITS)
    gathered = source.gather(1, index.to(device).unsqueeze(-1).expand(-1, -1, NUM_DIGITS)).to(dtype)
    planted = _missing_digit_row(method, dtype, device)
    gathered = torch.where(is_missing.to(device).unsqueeze(-1), planted, gathered)
    result = ntl_loss(
        gathered, row_targets.to(device), torch.arange(NUM_DIGITS, device=device),
        method=method, reduction="sample", return_counts=True,
    )
    losses, counts = result.loss.tolist(), result.counts.tolist()
    out_losses, emitted, missing = [], [], []
    for b, r in enumerate(rows):
        emitted.append(len(r.positions) if r is not None else 0)
        missing.append(r.missing if r is not None else 0)
        if r is None or counts[b] == 0:
            out_losses.append(None)
        elif not math.isfinite(losses[b]):
            out_losses.append(None)
            statuses[b] = NON_FINITE
        else:
            out_losses.append(losses[b])
    return out_losses, statuses, emitted, missing


def _all_tokens_losses(info: DigitLogProbs, responses, method: str) -> tuple[list, list[str], list[int], list[int]]:
    """Per sample: (loss or None, status, scored digit positions, 0) over every digit token of the response."""
    batch = info.log_probs.shape[0]
    targets = digit_targets(info.response_ids, info.digit_ids, IGNORE).masked_fill(~info.mask, IGNORE)
    # Only the token columns with a digit in some sample enter ntl_loss: the rest are ignored rows anyway, and a
    # runaway response (1 MiB of ",") has few or none.
    digit_columns = (targets != IGNORE).any(0).nonzero().squeeze(-1)
    if digit_columns.numel() == 0:  # no digit token at all (empty responses too): nothing to score
        losses, counts = [math.nan] * batch, [0] * batch
    else:
        result = ntl_loss(
            info.log_probs[:, digit_columns], targets[:, digit_columns],
            torch.arange(NUM_DIGITS, device=info.log_probs.device), method=method, reduction="sample",
            return_counts=True,
        )
        losses, counts = result.loss.tolist(), result.counts.tolist()
    out_losses, statuses = [], []
    for loss, count, response in zip(losses, counts, responses):
        if count != (_count_digits(response) if isinstance(response, str) else 0):
            status = DIGIT_COUNT_MISMATCH
        else:
            status = NO_DIGITS if count == 0 else OK if math.isfinite(loss) else NON_FINITE
        out_losses.append(loss if status == OK else None)
        statuses.append(status)
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
    return _score_batch(mode, solution_strs, ground_truths, info, tau, method, extraction, answer_credit, data_sources)


def compute_score(
    mode: str, solution_str, ground_truth, ntl_info=None, *, data_source=None, extra_info=None, tau=1.0, method=None,
    extraction="strict", answer_credit="none",
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
        mode, [solution_str], [ground_truth], info, tau, method, extraction, answer_credit, [data_source]
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
                 data_sources=None) -> list[dict]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if answer_credit not in ANSWER_CREDITS:
        raise ValueError(f"answer_credit must be one of {ANSWER_CREDITS}, got {answer_credit!r}")
    if answer_credit != "none" and mode != "final_answer":
        raise ValueError(f"answer_credit={answer_credit!r} is an option of the final_answer mode, not {mode!r}")
    tau = check_tau(tau)
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
        losses, statuses, digits, missing = _final_answer_losses(info, solution_strs, answers, aligned_truths, method)
    else:
        losses, statuses, digits, missing = _all_tokens_losses(info, solution_strs, method)
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
