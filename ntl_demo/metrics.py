"""Per-sample answer metrics of the rollouts: exact match and place-value digit accuracy, in the answer format of
each problem's data source (``ntl_reward.formats``: GSM8K's ``####``, MATH's ``\\boxed{}``)."""

from __future__ import annotations

from ntl_reward.answer import decimal_digits, ground_truth_text
from ntl_reward.formats import GSM8K, FinalAnswer, answer_format, extract_final_answer, is_correct_answer

from .data import DATA_SOURCE


def final_answer(response: str, data_source: str = DATA_SOURCE) -> FinalAnswer | None:
    """The response's graded final answer in its data source's format (None: it gives none)."""
    return extract_final_answer(response, answer_format(data_source))


def _places(text: str | None) -> dict[int, str]:
    """Digits of a plain decimal by place: 0 = units, 1 = tens, -1 = tenths ... (empty when not a number)."""
    digits = decimal_digits(text)
    if digits is None:
        return {}
    integer = digits.integer.lstrip("0")
    places = {power: digit for power, digit in enumerate(reversed(integer))}
    places.update({-(k + 1): digit for k, digit in enumerate(digits.fraction.rstrip("0"))})
    return places or {0: "0"}


def digit_accuracy(response: str, ground_truth: str, data_source: str = DATA_SOURCE) -> float:
    """Fraction of digit places, over the union of the answer's and the ground truth's, where the final answer has
    the ground truth's digit: ``18`` vs ``19`` -> 0.5, ``118`` vs ``18`` -> 2/3, no (numeric) answer -> 0. Partial
    credit that exact match cannot see."""
    answer = final_answer(response, data_source)
    predicted = _places(answer.number.text if answer is not None and answer.number is not None else None)
    truth = _places(ground_truth_text(ground_truth))
    if not truth:
        return 0.0
    union = predicted.keys() | truth.keys()
    return sum(predicted.get(place) == truth.get(place) for place in union) / len(union)


def exact_match(response: str, ground_truth: str, extraction: str = "strict", data_source: str = DATA_SOURCE) -> float:
    """1.0 when the final answer equals the ground truth, else 0.0. ``extraction``: ``"strict"`` = the graded answer
    of the data source's format (after the last ``####``, in the last ``\\boxed{}``); ``"flexible"`` = the
    response's last number, whatever the format (``"The answer is 12."``): arithmetic without the format."""
    if extraction == "flexible":
        return float(is_correct_answer(extract_final_answer(response, GSM8K, "flexible"), ground_truth))
    answer_style = answer_format(data_source)
    return float(is_correct_answer(extract_final_answer(response, answer_style), ground_truth, answer_style))
