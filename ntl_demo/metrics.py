"""Per-sample answer metrics of the rollouts: exact match and place-value digit accuracy."""

from __future__ import annotations

from ntl_reward import extract_answer, is_correct
from ntl_reward.answer import decimal_digits, ground_truth_text


def _places(text: str | None) -> dict[int, str]:
    """Digits of a plain decimal by place: 0 = units, 1 = tens, -1 = tenths ... (empty when not a number)."""
    digits = decimal_digits(text)
    if digits is None:
        return {}
    integer = digits.integer.lstrip("0")
    places = {power: digit for power, digit in enumerate(reversed(integer))}
    places.update({-(k + 1): digit for k, digit in enumerate(digits.fraction.rstrip("0"))})
    return places or {0: "0"}


def digit_accuracy(response: str, ground_truth: str) -> float:
    """Fraction of digit places, over the union of the answer's and the ground truth's, where the final answer
    (after the last ``####``) has the ground truth's digit: ``18`` vs ``19`` -> 0.5, ``118`` vs ``18`` -> 2/3,
    no answer -> 0. Partial credit that exact match cannot see."""
    answer = extract_answer(response)
    predicted = _places(answer.text if answer is not None else None)
    truth = _places(ground_truth_text(ground_truth))
    if not truth:
        return 0.0
    union = predicted.keys() | truth.keys()
    return sum(predicted.get(place) == truth.get(place) for place in union) / len(union)


def exact_match(response: str, ground_truth: str, extraction: str = "strict") -> float:
    """1.0 when the final answer equals the ground truth as a number, else 0.0. ``extraction``: ``"strict"`` = the
    number after the last ``####`` (the graded answer); ``"flexible"`` = the response's last number, whatever the
    format (``"The answer is 12."``): arithmetic without the format."""
    answer = extract_answer(response, extraction)
    return float(is_correct(answer.text if answer is not None else None, ground_truth))
