"""GSM8K answer extraction and comparison: verl's strict ``#### <number>`` rule, made robust.

The final answer is the number after the last ``####`` marker of the whole response (``"strict"``), or the last
number of the response (``"flexible"``). Between the marker and the number any spaces, tabs, ``*`` and ``$`` are
allowed (``"####186"``, ``"#### $1,234."``, ``"**#### 18**"``); commas are dropped, trailing dots too, and answers
are compared with the ground truth as exact decimal numbers (``"18.0" == "18"``, ``"1,234" == "1234"``, ``"-3"``).

verl's own strict rule (``verl/utils/reward_score/gsm8k.py``) looks only at the last 300 characters, needs exactly
``"#### "`` and compares strings. Because the marker here is looser, a response can hold a later answer that verl
does not see (``"#### 18 ... ####19"``); so that this reward never marks wrong what verl marks right, a response
also counts as correct when verl's rule, restated in ``verl_strict_answer``, finds the ground truth.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import NamedTuple

EXTRACTIONS = ("strict", "flexible")

# A run of digits, commas and dots holding at least one digit, optionally negative.
_NUMBER = r"-?[0-9.,]*[0-9][0-9.,]*"
_MARKED_NUMBER = re.compile(r"####[ \t*$]*(" + _NUMBER + ")")
_ANY_NUMBER = re.compile(_NUMBER)
_PLAIN_DECIMAL = re.compile(r"(-?)([0-9]*)(?:\.([0-9]*))?")

# verl's strict rule: only the last 300 characters, exactly "#### ", verl's character class.
_VERL_CLIP_CHARS = 300
_VERL_MARKED_NUMBER = re.compile(r"#### (-?[0-9.,]+)")


class Answer(NamedTuple):
    """An extracted answer: ``text`` cleaned (no commas, no trailing dots) and its ``[start, end)`` in the response."""

    text: str
    start: int
    end: int


class DecimalDigits(NamedTuple):
    """A plain decimal number split for place-value alignment: ``"-1234.50"`` -> ("-", "1234", "50")."""

    sign: str
    integer: str
    fraction: str


def clean_number(raw: str) -> str:
    """Drop commas and ``$`` anywhere and dots at the end: ``"$1,234."`` -> ``"1234"``."""
    return raw.replace(",", "").replace("$", "").rstrip(".")


def extract_answer(response: str, extraction: str = "strict") -> Answer | None:
    """The final answer of ``response`` or None (see the module docstring for the two rules)."""
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    if not isinstance(response, str):
        return None
    pattern, group = (_MARKED_NUMBER, 1) if extraction == "strict" else (_ANY_NUMBER, 0)
    last = None
    for last in pattern.finditer(response):
        pass
    if last is None:
        return None
    return Answer(clean_number(last.group(group)), last.start(group), last.end(group))


def verl_strict_answer(response: str) -> str | None:
    """What verl 0.9.1's strict gsm8k rule extracts: last ``"#### "`` number in the last 300 chars, commas dropped."""
    if not isinstance(response, str):
        return None
    found = _VERL_MARKED_NUMBER.findall(response[-_VERL_CLIP_CHARS:])
    return found[-1].replace(",", "") if found else None


def ground_truth_text(ground_truth) -> str | None:
    """The ground truth as text; finite floats in positional notation (``1e+20`` -> ``"100000000000000000000"``)."""
    if isinstance(ground_truth, bool) or ground_truth is None:
        return None
    if isinstance(ground_truth, float):
        return format(Decimal(repr(ground_truth)), "f") if math.isfinite(ground_truth) else None
    if isinstance(ground_truth, (str, int)):
        return str(ground_truth)
    return None


def decimal_digits(text: str | None) -> DecimalDigits | None:
    """Split a plain decimal (ASCII digits, at most one dot, optional minus) after ``clean_number``; else None.

    ``"1,234.50"`` -> ("", "1234", "50"); ``".5"`` -> ("", "", "5"); ``"1.2.3"``, ``"1e5"``, ``"abc"`` -> None.
    """
    if text is None:
        return None
    parts = _PLAIN_DECIMAL.fullmatch(clean_number(text.strip()))
    if parts is None or not (parts.group(2) or parts.group(3)):
        return None
    return DecimalDigits(parts.group(1), parts.group(2), parts.group(3) or "")


def _value(digits: DecimalDigits) -> Decimal:
    return Decimal(f"{digits.sign}{digits.integer or '0'}.{digits.fraction or '0'}")


def is_correct(answer: str | None, ground_truth, response: str) -> bool:
    """Exact match: ``answer`` equals the ground truth as a number (or as text), or verl's strict rule agrees."""
    truth = ground_truth_text(ground_truth)
    if answer is not None and truth is not None:
        if answer == clean_number(truth.strip()):
            return True
        answer_digits, truth_digits = decimal_digits(answer), decimal_digits(truth)
        if answer_digits is not None and truth_digits is not None and _value(answer_digits) == _value(truth_digits):
            return True
    return isinstance(ground_truth, str) and verl_strict_answer(response) == ground_truth
