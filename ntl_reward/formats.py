"""The answer formats of verl's math data sources: which answer a response gives, whether it is right, its number.

verl 0.9.1's ``default_compute_score`` (``verl/utils/reward_score/__init__.py``) picks a scorer by ``data_source``;
the rewards here route the same way (``answer_format``):

========================================================================  =========  ==============================
data_source                                                               format     answer
========================================================================  =========  ==============================
``openai/gsm8k``                                                          ``gsm8k``  the number after the last ``####``
``lighteval/MATH``, ``DigitalLearningGmbH/MATH-lighteval``,               ``boxed``  the content of the last
``HuggingFaceH4/MATH-500``                                                           ``\\boxed{...}`` / ``\\boxed ...``
``math_dapo``, ``math``, ``math_dapo_reasoning``, ``aime*``               ``dapo``   the last ``Answer:`` line, else
                                                                                     the last ``\\boxed{...}``
anything else (None, ``numina_*``, custom names)                          ``gsm8k``  (as before formats existed)
========================================================================  =========  ==============================

Unknown sources keep the GSM8K rule, the rewards' only rule before this module: the demo's and users' own source
names keep working. verl scores ``numina_*`` with prime_math's sympy grader, which is not reproduced here; those
sources get the GSM8K rule too (say ``data_source="HuggingFaceH4/MATH-500"`` to score them by their last box).

One answer per response, as for GSM8K: the last box (``boxed``), the last ``Answer:`` line (``dapo``) is the answer;
an earlier one never pays. verl's MATH scorer (``math_reward.py``) takes the last ``\\boxed`` too, but once any
``"\\boxed "`` (with a space) occurs it takes the text after the last ``"\\boxed "`` up to the next ``$`` even when a
``\\boxed{...}`` follows; a ``\\boxed`` followed by neither ``{`` nor a space, and ``\\fbox{...}``, are never paid
by verl (its ``remove_boxed`` assertion fails), so they are no box here. verl's DAPO scorer (``math_dapo.py``)
reads only the last 300 characters, and of those its box fallback only the last 100; it takes the last
``Answer:`` match of ``findall``, which for ``"Answer: 7, answer: 5"`` is the whole line ``"7, answer: 5"``
(here: ``"5"``, the last marker's).

Correct (``is_correct_answer``): everything verl's scorer for the source pays on a response with one answer (one
``\\boxed``; one ``Answer:`` marker, or none and one box), and beyond it only answers equal to the ground truth by
value. Both sides are read as numbers where they are one (``numeric_answer``): ``.75`` = ``0.75``, ``1,234`` =
``1234`` = ``1{,}234``, ``18\\%`` = ``18``, ``\\$5`` = ``5``, ``\\text{18}`` = ``18``, ``5\\text{ cm}`` = ``5``,
``90^\\circ`` = ``90``, ``5.`` = ``5`` — cases verl misses — and an answer followed by more than 300 characters
still counts. Otherwise the two texts are compared with verl's own normalisation of that scorer (``math_normal_form``:
``strip_string``, ``dapo_normal_form``: ``normalize_final_answer``; a DAPO box: equal text), re-implemented here
so that verl stays an optional dependency; tests/test_reward_formats.py checks it against verl's scorers.

NTL reads the digits of a numeric answer: ``FinalAnswer.number`` is an ``answer.Answer`` whose ``text`` is the
plain decimal (``"-1234.5"``) and whose ``[start, end)`` spans the digits of that number in the response (those
inside the box), the span the final-answer alignment reads. An answer that is not a number (``\\frac{1}{2}``,
``x+1``, ``(1,2)``) has ``number`` None: it gets verl's verdict and no NTL (``ntl_status`` ``answer_not_a_number``).

Linear time on any text: the last box is found with ``str.rfind``, its end by visiting the ``}`` after it (the
``{`` in between counted by ``str.count``; one Python step per ``}``, ~1 us), the ``Answer:`` marker with one search of the reversed response
(possessive, no alternation, as ``answer.py``), and every normalisation is a fixed number of linear string passes
or fixed-width substitutions.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import NamedTuple

from .answer import EXTRACTIONS, Answer, DecimalDigits, decimal_digits, extract_answer, ground_truth_text, is_correct

GSM8K, BOXED, DAPO = "gsm8k", "boxed", "dapo"
ANSWER_FORMATS = (GSM8K, BOXED, DAPO)
BOXED_SOURCES = ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500")
DAPO_SOURCES = ("math_dapo", "math", "math_dapo_reasoning")  # and every name starting with "aime"
DAPO_PREFIX = "aime"

# Where a final answer was read: GSM8K's marked (or, flexible, last) number, a box, an ``Answer:`` line.
MARKER, BOX, LINE = "marker", "box", "line"

_BOX_BRACE, _BOX_SPACE = "\\boxed{", "\\boxed "
_ASCII_DIGIT = re.compile(r"[0-9]")
# "answer", optional whitespace, ":" reversed, case-insensitive as verl's "(?i)Answer\s*:". The repeat is
# possessive and \s never matches "r", so an attempt starts only at a ":" and reads the whitespace run after it
# once: one search of the reversed response finds the last marker in O(len(response)).
_REVERSED_ANSWER_MARKER = re.compile(r":\s*+rewsna", re.IGNORECASE)
_LEADING_SPACE = re.compile(r"\s*+")
_NUMBER = re.compile(r"(-?+)([0-9,]*+)(?:\.([0-9]*+))?+")


class FinalAnswer(NamedTuple):
    """A response's final answer: ``text`` as written (a box's content, an ``Answer:`` line; GSM8K: the cleaned
    number), ``number`` the plain number it is, located on its digits (None: not a number), ``kind`` where it was
    read (``MARKER``, ``BOX``, ``LINE``)."""

    text: str
    number: Answer | None
    kind: str


def answer_format(data_source) -> str:
    """The answer format verl 0.9.1's ``default_compute_score`` scores ``data_source`` with (module docstring);
    ``GSM8K`` for any other value (None, a non-string, an unknown name)."""
    if not isinstance(data_source, str):
        return GSM8K
    if data_source in BOXED_SOURCES:
        return BOXED
    if data_source in DAPO_SOURCES or data_source.startswith(DAPO_PREFIX):
        return DAPO
    return GSM8K


# ---------------------------------------------------------------- extraction


def _last_box(response: str) -> tuple[int, int] | None:
    """``[start, end)`` of the last box's content: ``\\boxed{...}`` with balanced braces, or ``\\boxed ...`` up to
    the next ``$`` (or the end); None without a box or when the last ``\\boxed{`` is never closed."""
    braced, spaced = response.rfind(_BOX_BRACE), response.rfind(_BOX_SPACE)
    if spaced > braced:
        start = spaced + len(_BOX_SPACE)
        end = response.find("$", start)
        return start, len(response) if end < 0 else end
    if braced < 0:
        return None
    # The depth falls only at a "}": visit those alone, counting the "{" in between in C.
    start = position = braced + len(_BOX_BRACE)
    depth = 1
    while (close := response.find("}", position)) >= 0:
        depth += response.count("{", position, close) - 1
        if depth == 0:
            return start, close
        position = close + 1
    return None


def _last_answer_line(response: str) -> tuple[int, int] | None:
    """``[start, end)`` of what verl's ``Answer\\s*:\\s*([^\\n]+)`` captures after the LAST marker: the rest of the
    line after the whitespace; when only whitespace follows, its last character that is no newline (the regex
    backtracks onto it); None without a marker or when only newlines follow it."""
    found = _REVERSED_ANSWER_MARKER.search(response[::-1])
    if found is None:
        return None
    after_colon = len(response) - found.start()
    start = _LEADING_SPACE.match(response, after_colon).end()
    if start == len(response):  # whitespace to the end: the regex backtracks to its last non-newline character
        last = len(response.rstrip("\n")) - 1
        return (last, last + 1) if last >= after_colon else None
    end = response.find("\n", start)
    return start, len(response) if end < 0 else end


def extract_final_answer(response, answer_format_name: str = GSM8K, extraction: str = "strict") -> FinalAnswer | None:
    """The final answer of ``response`` in the given format (module docstring), or None when it gives none.

    ``extraction`` ("strict" / "flexible") chooses GSM8K's rule (``answer.extract_answer``); the boxed and DAPO
    formats have one rule each, as in verl.
    """
    if answer_format_name not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format_name!r}")
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    if answer_format_name == GSM8K:
        answer = extract_answer(response, extraction)
        return None if answer is None else FinalAnswer(answer.text, answer, MARKER)
    if not isinstance(response, str):
        return None
    span, kind = (_last_answer_line(response), LINE) if answer_format_name == DAPO else (None, BOX)
    if span is None:
        span, kind = _last_box(response), BOX
    if span is None:
        return None
    start, end = span
    text = response[start:end]
    return FinalAnswer(text, numeric_answer(text, start), kind)


# ---------------------------------------------------------------- numbers

# Value-free decoration around a number, dropped before reading it: TeX spacing, dollar and percent signs,
# degrees, math delimiters. "{,}" and ",\!" are TeX's thousands separators (",\!" becomes "," by dropping "\!").
_DECORATIONS = ("\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "$", "\\%", "%", "^{\\circ}", "^\\circ", "\\(", "\\)",
                "\\[", "\\]", "\\left", "\\right")
# Wrappers of the whole answer: "\text{18}", "\boxed{18}" (an "Answer:" line may box its answer), "{18}".
_WRAPPERS = ("\\text{", "\\textbf{", "\\mathrm{", "\\mbox{", "\\boxed{", "{")
_UNIT_WRAPPERS = ("\\text{", "\\mbox{", "\\mathrm{")
_MAX_UNWRAP = 3  # nesting read; each unwrap copies the text, so a bound keeps a runaway answer linear


def _drop_unit(text: str) -> str:
    """``"5\\text{ cm}"`` -> ``"5"``: a final ``\\text{...}`` (``\\mbox``, ``\\mathrm``) of letters and spaces after
    something else is a unit."""
    if not text.endswith("}"):
        return text
    start = max(text.rfind(wrapper) for wrapper in _UNIT_WRAPPERS)
    if start <= 0:
        return text
    unit = text[text.index("{", start) + 1 : -1]
    return text[:start] if unit.strip() and all(c.isalpha() or c == " " for c in unit) else text


def numeric_answer(text, offset: int = 0) -> Answer | None:
    """``text`` read as one plain decimal number, or None when it is anything else.

    Decoration carries no value and is dropped: whitespace, markdown's ``**`` around it, ``\\$`` / ``$``,
    ``\\%`` / ``%``, ``^\\circ``, TeX spacing (``\\!``, ``\\,``), ``\\(``...``\\)``, wrappers of the whole text
    (``\\text{}``, ``\\textbf{}``, ``\\mathrm{}``, ``\\mbox{}``, ``\\boxed{}``, ``{}``), a unit at the end
    (``\\text{ cm}``) and a final ``.``. What is left must be ``-?digits[.digits]`` with ASCII digits, commas only as
    thousands separators (``1,234``, ``1{,}234``, ``1,\\!234``; ``1,2`` is a pair, not twelve). Returns
    ``Answer(plain, start, end)``: ``plain`` without separators (``"-1234.5"``, ``".75"``), ``[start, end)`` from
    the first to the last digit of ``text`` shifted by ``offset`` (the position of ``text`` in the response). Every
    digit of ``text`` is one of the number's: decoration holds none.
    """
    if not isinstance(text, str):
        return None
    plain = _drop_unit(text.strip().strip("*"))  # "**Answer:** 18**": markdown bold
    for _ in range(_MAX_UNWRAP):
        plain = plain.strip()
        wrapper = next((w for w in _WRAPPERS if plain.startswith(w) and plain.endswith("}")), None)
        if wrapper is None:
            break
        plain = plain[len(wrapper) : -1]
    plain = plain.replace("{,}", ",")
    for decoration in _DECORATIONS:
        plain = plain.replace(decoration, "")
    plain = "".join(plain.split()).rstrip(".")
    parts = _NUMBER.fullmatch(plain)
    if parts is None or not (parts.group(2).replace(",", "") or parts.group(3)):
        return None
    sign, integer, fraction = parts.groups()
    groups = integer.split(",")
    if len(groups) > 1 and not (1 <= len(groups[0]) <= 3 and all(len(group) == 3 for group in groups[1:])):
        return None
    number = sign + "".join(groups) + ("" if fraction is None else "." + fraction)
    first = _ASCII_DIGIT.search(text).start()
    last = max(text.rfind(digit) for digit in "0123456789")
    return Answer(number, offset + first, offset + last + 1)


def truth_digits(ground_truth, answer_format_name: str = GSM8K) -> DecimalDigits | None:
    """The ground truth's digits for place-value alignment, None when it is not a number: GSM8K reads it as
    ``answer.decimal_digits`` does (as before); the math formats as ``numeric_answer`` (``"\\$18.90"``,
    ``"18\\%"``, ``"1{,}000"``; ``"\\frac{1}{2}"`` is no number)."""
    text = ground_truth_text(ground_truth)
    if answer_format_name == GSM8K:
        return decimal_digits(text)
    number = numeric_answer(text)
    return None if number is None else decimal_digits(number.text)


# ---------------------------------------------------------------- verl's normalisations, re-implemented

# verl's math_reward.strip_string, step by step: literal replacements first ...
_MATH_REPLACEMENTS = (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                      ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""))
_MATH_PERCENT = (("\\\\%", ""), ("\\%", ""), (" .", " 0."), ("{.", "{0."))


class _NotNormalisable(Exception):
    """verl's normalisation raised: verl then compares the raw texts."""


def _math_sqrt_braces(text: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}`` (one character); ``\\sqrt`` at the very end raises, as in verl."""
    head, *rest = text.split("\\sqrt")
    for piece in rest:
        if not piece:
            raise _NotNormalisable
        head += "\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:])
    return head


def _math_frac_braces(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``; the text unchanged when a ``\\frac``
    has one character after it; ``\\frac`` at the very end raises, as in verl."""
    head, *rest = text.split("\\frac")
    for piece in rest:
        if not piece:
            raise _NotNormalisable
        if piece[0] == "{":
            head += "\\frac" + piece
        elif len(piece) < 2:
            return text
        elif piece[1] != "{":
            head += "\\frac{" + piece[0] + "}{" + piece[1] + "}" + piece[2:]
        else:
            head += "\\frac{" + piece[0] + "}" + piece[1:]
    return head


def _canonical_int(text: str) -> bool:
    try:
        return str(int(text)) == text
    except ValueError:
        return False


def math_normal_form(text: str) -> str | None:
    """verl 0.9.1's MATH normalisation (``math_reward.strip_string``) of ``text``; None where verl's raises (two
    ``"\\text{ "``, a trailing ``\\sqrt`` or ``\\frac``), where verl compares the raw texts instead."""
    try:
        for old, new in _MATH_REPLACEMENTS:
            text = text.replace(old, new)
        units = text.split("\\text{ ")  # units on the right
        if len(units) > 2:
            raise _NotNormalisable
        text = units[0]
        for old, new in _MATH_PERCENT:
            text = text.replace(old, new)
        if not text:
            return text
        if text[0] == ".":
            text = "0" + text
        sides = text.split("=")
        if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 5" -> "5"
            text = sides[1]
        text = _math_frac_braces(_math_sqrt_braces(text).replace(" ", ""))
    except _NotNormalisable:
        return None
    if text == "0.5":
        return "\\frac{1}{2}"
    halves = text.split("/")
    if len(halves) == 2 and all(map(_canonical_int, halves)):
        return "\\frac{" + halves[0] + "}{" + halves[1] + "}"
    return text


def math_equal(answer: str, truth: str) -> bool:
    """verl's MATH equality (``math_reward.is_equiv``): equal normal forms, or equal texts where one has none."""
    answer_form, truth_form = math_normal_form(answer), math_normal_form(truth)
    if answer_form is None or truth_form is None:
        return answer == truth
    return answer_form == truth_form


# verl's math_dapo.normalize_final_answer: replacements, then removed expressions, in this order.
_DAPO_REPLACEMENTS = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                      (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"))
_DAPO_REMOVED = ("square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
                 "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
                 "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
                 "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;",
                 ",\\!", "{,}", '"', "\\dots")


# TeX shorthand, "frac12" -> "frac{1}{2}", "sqrt2" -> "sqrt{2}": fixed width, no repeat, so linear.
_FRAC_SHORTHAND = re.compile(r"frac([^{])(.)")
_SQRT_SHORTHAND = re.compile(r"sqrt([^{])")


def _unwrap_each(line: str, command: str) -> str:
    """Every ``command`` + ``{...}`` replaced by its content up to the next ``}``, left to right."""
    pieces, position = [], 0
    while (start := line.find(command, position)) >= 0:
        close = line.find("}", start + len(command))
        if close < 0:
            break
        pieces.append(line[position:start] + line[start + len(command):close])
        position = close + 1
    pieces.append(line[position:])
    return "".join(pieces)


def _dapo_line(line: str) -> str:
    """verl's regular-expression steps on one line (their ``.`` never crosses a newline): the first ``$...$`` kept
    alone, ``\\text{}`` / ``\\textbf{}`` / ``\\overline{}`` unwrapped, a ``\\boxed{`` up to the line's last ``}``
    unwrapped."""
    dollars = line.split("$", 2)
    if len(dollars) == 3:
        line = "$" + dollars[1] + "$"
    for command in ("\\text{", "\\textbf{", "\\overline{"):
        line = _unwrap_each(line, command)
    box, close = line.find("\\boxed{"), line.rfind("}")
    if 0 <= box and close >= box + len("\\boxed{"):
        line = line[:box] + line[box + len("\\boxed{"):close] + line[close + 1:]
    return line


def dapo_normal_form(text: str) -> str:
    """verl 0.9.1's DAPO normalisation (``math_dapo.normalize_final_answer``) of an answer or a ground truth."""
    text = text.split("=")[-1]
    for old, new in _DAPO_REPLACEMENTS:
        text = text.replace(old, new)
    for removed in _DAPO_REMOVED:
        text = text.replace(removed, "")
    text = "\n".join(map(_dapo_line, text.split("\n")))
    # Functions, not templates: Python 3.11 expands a template in Python once per match.
    text = _FRAC_SHORTHAND.sub(lambda found: "frac{" + found[1] + "}{" + found[2] + "}", text)
    text = _SQRT_SHORTHAND.sub(lambda found: "sqrt{" + found[1] + "}", text).replace("$", "")
    if text.replace(",", "").isdigit():
        text = text.replace(",", "")
    return text.strip()


# ---------------------------------------------------------------- correctness


def is_correct_answer(answer: FinalAnswer | None, ground_truth, answer_format_name: str = GSM8K) -> bool:
    """Exact match of a final answer with the ground truth in its format (module docstring): what verl's scorer
    pays for a one-answer response, and equal numbers."""
    if answer is None:
        return False
    if answer_format_name == GSM8K:
        return is_correct(answer.text, ground_truth)
    truth = ground_truth_text(ground_truth)
    if truth is None:
        return False
    truth_number = numeric_answer(truth)
    if answer.number is not None and truth_number is not None:
        if Decimal(answer.number.text) == Decimal(truth_number.text):  # plain decimals: "-1234.5", ".75"
            return True
    if answer_format_name == BOXED:
        return math_equal(answer.text, truth)
    if answer.kind == BOX:  # verl's DAPO box fallback compares the raw texts
        return answer.text == truth
    return dapo_normal_form(answer.text) == dapo_normal_form(truth)
