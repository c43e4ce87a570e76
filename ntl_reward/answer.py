"""GSM8K answer extraction and comparison: verl's strict ``#### <number>`` rule, made robust, one answer per response.

(verl's other math formats, ``\\boxed{}`` and ``Answer:``, and the routing by ``data_source``: ``formats.py``.)

The final answer is the number after the last ``####`` marker of the whole response (``"strict"``), or the last
number of the response (``"flexible"``). Between the marker and the number any spaces, tabs, ``*`` and ``$`` are
allowed (``"####186"``, ``"#### $1,234."``, ``"**#### 18**"``); commas are dropped, trailing dots too, and answers
are compared with the ground truth as exact decimal numbers (``"18.0" == "18"``, ``"1,234" == "1234"``, ``"-3"``).

A response has one answer: its final one. ``"#### 5\n####8"`` answers 8, whatever the ground truth, so a policy
cannot list several answers and be paid when one of them is right. verl's own strict rule
(``verl/utils/reward_score/gsm8k.py``) looks only at the last 300 characters, needs exactly ``"#### "`` and compares
strings, so it misses a later ``"####8"`` and would pay that response for 5; here it earns nothing. Whenever a
response gives one marked answer, everything verl's strict rule scores correct against a ground truth holding a
digit is correct here too: verl's marker is a special case of this one, and its string equality implies equality
as numbers.
"""

from __future__ import annotations

import math
import numbers
import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

EXTRACTIONS = ("strict", "flexible")

# Linear time, by construction. A number is a maximal run of digits, commas and dots holding at least one digit,
# with the "-" right before it. The final answer is searched for in the REVERSED response, where the first match
# is the response's last answer, so one search finds it (no scan over every number). In reverse a number reads
# "[.,]* digit [0-9.,]* -?", a marked one is followed by "[ \t*$]* ####". Every quantifier is possessive (``*+``,
# ``?+``: it takes the whole run and never gives any back) and there is no alternation, so an attempt cannot
# backtrack: it costs the characters it reads. The negative lookbehind lets an attempt start only at the start of a
# run, so the runs (and the filler after each) are read once in all: O(len(response)) for any text. The old
# forward patterns backtracked over every start inside a long run of "." or ",": 7-11 s at 40 KB.
# tests/test_reward_edges.py checks the patterns' opcodes (no backtracking repeat, no branch) and 1 MB inputs.
_REVERSED_NUMBER = r"(?<![0-9.,])[.,]*+[0-9][0-9.,]*+-?+"
_REVERSED_MARKED_NUMBER = re.compile(r"(" + _REVERSED_NUMBER + r")[ \t*$]*+####")
_REVERSED_ANY_NUMBER = re.compile(r"(" + _REVERSED_NUMBER + r")")
_PLAIN_DECIMAL = re.compile(r"(-?+)([0-9]*+)(?:\.([0-9]*+))?+")


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
    pattern = _REVERSED_MARKED_NUMBER if extraction == "strict" else _REVERSED_ANY_NUMBER
    found = pattern.search(response[::-1])
    if found is None:
        return None
    start, end = len(response) - found.end(1), len(response) - found.start(1)
    return Answer(clean_number(response[start:end]), start, end)


def ground_truth_text(ground_truth) -> str | None:
    """The ground truth as text, or None when it is no answer (None, a bool, NaN, +-inf, another type).

    str as is; integers (``int``, ``np.int64``: any ``numbers.Integral``) in decimal; finite real numbers (``float``,
    ``np.float32``, ``np.float64``: any ``numbers.Real``; parquet columns come back as numpy scalars) as the exact
    decimal of the shortest text that reads back as the same value in the number's own precision, in positional
    notation: ``np.float32(0.1)`` -> ``"0.1"`` (not its float64 value 0.10000000149...), ``1e+20`` ->
    ``"100000000000000000000"``.
    """
    if isinstance(ground_truth, str):
        return ground_truth
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, numbers.Real):
        return None  # None, bools (numpy's np.bool_ is no numbers.Real), bytes, containers
    if isinstance(ground_truth, numbers.Integral):
        return str(int(ground_truth))
    if not math.isfinite(ground_truth):
        return None
    try:  # str of a Python or numpy float is its shortest round-trip text in its own precision
        exact = Decimal(str(ground_truth))
    except InvalidOperation:  # a Real whose str is no decimal (fractions.Fraction "1/3"): its float value
        exact = Decimal(repr(float(ground_truth)))
    return format(exact, "f")


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


def is_correct(answer: str | None, ground_truth) -> bool:
    """Exact match of a response's final ``answer`` (``extract_answer(...).text``; None = no answer) with the ground
    truth: equal as text after ``clean_number``, or as exact decimal numbers (``"18.0"`` vs ``"18"``)."""
    truth = ground_truth_text(ground_truth)
    if answer is None or truth is None:
        return False
    if answer == clean_number(truth.strip()):
        return True
    answer_digits, truth_digits = decimal_digits(answer), decimal_digits(truth)
    return answer_digits is not None and truth_digits is not None and _value(answer_digits) == _value(truth_digits)
