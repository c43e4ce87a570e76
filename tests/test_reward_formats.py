"""ntl_reward's answer formats (issue 17 item 5) against verl 0.9.1's own scorers as the oracle: the routing by
data_source, and generated responses in the boxed (MATH) and ``Answer:`` (DAPO/AIME) formats. Everything verl pays
on a one-answer response is paid; what is paid beyond it is verl's verdict on the final answer alone or an answer
equal to the ground truth by value; NTL reads exactly the digits of a numeric answer, and an answer that is no
number gets verl's verdict and no NTL."""

import contextlib
import io
import math
import re
import time
from decimal import Decimal
from re import _parser as sre_parser

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from ntl_reward import compute_scores
from ntl_reward import formats as formats_module
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.final_answer import compute_score as final_answer_score
from ntl_reward.formats import BOXED, DAPO, GSM8K, answer_format, extract_final_answer
from tests.test_reward_edges import _opcodes

reward_score = pytest.importorskip("verl.utils.reward_score")
from verl.utils.reward_score import math_dapo, math_reward  # noqa: E402 (verl is optional)

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIGIT_IDS = list(QWEN2_5_DIGIT_IDS)
MATH_SOURCES = ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500")
DAPO_SOURCES = ("math_dapo", "math", "math_dapo_reasoning", "aime2024", "aime25")


def verl_pays(data_source, response, truth) -> bool:
    """verl 0.9.1's own verdict: ``default_compute_score`` (its MATH scorer prints what it catches: silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        result = reward_score.default_compute_score(data_source, response, truth)
    return (result["score"] if isinstance(result, dict) else result) > 0


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize("data_source", ("openai/gsm8k",) + MATH_SOURCES + DAPO_SOURCES)
@pytest.mark.parametrize("response", ["So #### 5", "So $\\boxed{5}$.", "So\nAnswer: 5", "So \\fbox{5}"])
def test_the_format_of_each_source_is_verls(data_source, response):
    """Each response is written in one format; verl's dispatch pays it exactly for that format's sources."""
    expected = verl_pays(data_source, response, "5")
    for score in (final_answer_score, all_tokens_score):
        assert score(data_source, response, "5")["exact_match"] == expected, (data_source, score.__module__)


@pytest.mark.parametrize("data_source", [None, "t", "numina_olympiads", "openai/gsm8k_custom", 7])
def test_unknown_sources_keep_the_gsm8k_rule(data_source):
    assert answer_format(data_source) == GSM8K
    assert final_answer_score(data_source, "#### 5", "5")["exact_match"] == 1
    assert final_answer_score(data_source, "\\boxed{5}", "5")["exact_match"] == 0


def test_batched_scores_take_one_source_or_one_per_sample():
    responses, truths = ["\\boxed{5}", "Answer: 5", "#### 5"], ["5"] * 3
    per_sample = compute_scores("all_tokens", responses, truths, data_sources=["HuggingFaceH4/MATH-500",
                                                                                "aime2024", "openai/gsm8k"])
    assert [r["exact_match"] for r in per_sample] == [1, 1, 1]
    one = compute_scores("all_tokens", responses, truths, data_sources="HuggingFaceH4/MATH-500")
    assert [r["exact_match"] for r in one] == [1, 0, 0]
    with pytest.raises(ValueError, match="data_sources"):
        compute_scores("all_tokens", responses, truths, data_sources=["math"])


# ---------------------------------------------------------------- generated responses vs verl's scorers

# A number as the generator wrote it: (text, value, its ASCII digits in order).
_SEPARATORS = (",", "{,}", ",\\!")


@st.composite
def numbers(draw):
    negative, integer = draw(st.booleans()), draw(st.integers(0, 10**7))
    fraction = draw(st.text("0123456789", max_size=3))
    integer_text = str(integer)
    if integer >= 1000 and draw(st.booleans()):
        separator = draw(st.sampled_from(_SEPARATORS))
        head = len(integer_text) % 3 or 3
        groups = [integer_text[:head]] + [integer_text[i:i + 3] for i in range(head, len(integer_text), 3)]
        integer_text = separator.join(groups)
    if integer == 0 and fraction and draw(st.booleans()):
        integer_text = ""  # ".75"
    text = "-" * negative + integer_text + ("." + fraction if fraction else "")
    value = Decimal(("-" if negative else "") + str(integer) + "." + (fraction or "0"))
    return text, value, re.sub("[^0-9]", "", integer_text) + fraction


# Value-free decoration around a number ({} is the number).
DECORATIONS = ("{}", "{}", "\\${}", "{}\\%", "{}%", "{}^\\circ", "{}^{{\\circ}}", "\\text{{{}}}", "{}\\text{{ cm}}",
               "{}.", " {} ", "\\textbf{{{}}}", "\\mathrm{{{}}}")
NON_NUMBERS = ("\\frac{1}{2}", "\\frac12", "\\dfrac{1}{2}", "1/2", "x+1", "x + 1", "(1,2)", "1,2", "\\sqrt{2}",
               "\\sqrt2", "2\\sqrt{3}", "\\text{(C)}", "k=5", "\\pi", "10^{3}", "3x", "\\infty", "5 \\text{ cm}^2")
TRUTHS = NON_NUMBERS + ("0.5", "5", "1000", "\\$18.90", "18\\%", "90^\\circ")


@st.composite
def answers(draw, dollar=True):
    """(answer text, its value or None when it is no number, its digits or None)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(NON_NUMBERS)), None, None
    text, value, digits = draw(numbers())
    decorations = DECORATIONS if dollar else tuple(d for d in DECORATIONS if "$" not in d)
    return draw(st.sampled_from(decorations)).format(text), value, digits


@st.composite
def truths_for(draw, value):
    """The ground truth: the answer's own value as plain text (often), another number or a non-number."""
    choice = draw(st.integers(0, 3))
    if value is not None and choice <= 1:
        return format(value, "f") if choice == 0 else format(value.normalize(), "f")
    if choice == 2:
        return draw(numbers())[0]
    return draw(st.sampled_from(TRUTHS))


filler = st.text(alphabet="abc xyz.=+-\n0123456789", max_size=30)
short_tail = st.text(alphabet="abc .\n", max_size=20)
long_tail = st.sampled_from([" " * 301, "x" * 350, "\n" + "." * 400])


@st.composite
def math_responses(draw):
    """A MATH-style response: text, maybe an earlier box, the final box ({} or the space form), text after."""
    answer, value, digits = draw(answers(dollar=False)) if draw(st.booleans()) else draw(answers())
    spaced = "$" not in answer and draw(st.integers(0, 3)) == 0
    box = f"$\\boxed {answer}$" if spaced else "\\boxed{" + answer + "}"
    earlier = "\\boxed{" + draw(answers())[0] + "} " if draw(st.integers(0, 3)) == 0 else ""
    tail = draw(st.one_of(short_tail, long_tail))
    response = draw(filler) + earlier + draw(filler).replace("\n", " ") + box + ("" if spaced else tail)
    return response, answer, value, digits, draw(truths_for(value))


@st.composite
def dapo_responses(draw):
    """A DAPO-style response: ``Answer: ...`` (maybe after an earlier one), or only a box; text after."""
    answer, value, digits = draw(answers())
    tail = draw(st.one_of(short_tail, long_tail))
    hedge = draw(answers())[0] if draw(st.integers(0, 4)) == 0 else None
    if draw(st.integers(0, 3)) == 0:  # a box alone (an earlier line would be the answer: verl reads lines first)
        final = "\\boxed{" + answer + "}" + tail
        earlier = "" if hedge is None else "\\boxed{" + hedge + "}\n"
    else:
        final = draw(st.sampled_from(["Answer: ", "answer:", "**Answer:** ", "Final Answer :\n  "])) + answer
        final += "\n" + tail if tail else ""
        earlier = "" if hedge is None else "Answer: " + hedge + "\n"
    return draw(filler) + earlier + draw(filler) + "\n" + final, answer, value, digits, draw(truths_for(value))


def _one_answer(response, fmt):
    boxes = response.count("\\boxed")
    if fmt == BOXED:
        return boxes == 1
    markers = len(re.findall(r"(?i)answer\s*:", response))
    return (markers, boxes) in ((1, 0), (0, 1))


def _verl_pays_alone(fmt, final, truth):
    """verl's verdict on the extracted answer written alone in its format."""
    if fmt == BOXED:
        return verl_pays("HuggingFaceH4/MATH-500", "\\boxed{" + final.text + "}", truth)
    written = "Answer: " + final.text if final.kind == formats_module.LINE else "\\boxed{" + final.text + "}"
    return verl_pays("math_dapo", written, truth)


def _check_against_verl(data_source, response, answer, value, digits, truth):
    fmt = answer_format(data_source)
    ours = final_answer_score(data_source, response, truth, ntl_info={"ntl_loss": 0.5})
    if _one_answer(response, fmt) and verl_pays(data_source, response, truth):
        assert ours["exact_match"] == 1, "verl pays this one-answer response"
    final = extract_final_answer(response, fmt)
    if ours["exact_match"]:
        truth_value = formats_module.numeric_answer(truth)
        by_value = value is not None and truth_value is not None and value == Decimal(truth_value.text)
        assert by_value or _verl_pays_alone(fmt, final, truth), "paid beyond verl: equal by value only"
    assert final is not None and final.text.strip(" *") == answer.strip()  # the last answer is the answer
    if value is None:  # no number: verl's verdict, no NTL
        assert final.number is None and ours["ntl_status"] == "answer_not_a_number" and not ours["ntl_available"]
        assert ours["score"] == ours["exact_match"] == _verl_pays_alone(fmt, final, truth)
    else:  # a number: NTL reads its digits, those inside the answer
        assert final.number is not None and Decimal(final.number.text) == value
        assert re.sub("[^0-9]", "", response[final.number.start:final.number.end]) == digits
        assert ours["ntl_status"] == "ok"


@settings(max_examples=300, **SETTINGS)
@given(math_responses(), st.sampled_from(MATH_SOURCES))
def test_boxed_answers_against_verls_math_scorer(case, data_source):
    _check_against_verl(data_source, *case)


@settings(max_examples=300, **SETTINGS)
@given(dapo_responses(), st.sampled_from(DAPO_SOURCES))
def test_answer_lines_against_verls_dapo_scorer(case, data_source):
    _check_against_verl(data_source, *case)


# Raw pieces of the formats, joined at random: stray braces, box commands without braces, markers without answers.
RAW_PIECES = ("\\boxed{", "\\boxed ", "\\boxed", "\\fbox{", "{", "}", "$", "\\$", "Answer:", "answer :", "\n", " ",
              "5", "1", ",", ".", "-", "x", "\\frac", "\\text{ ", "=", "\\%", "**")
raw_text = st.lists(st.sampled_from(RAW_PIECES), max_size=14).map("".join)


@settings(max_examples=600, **SETTINGS)
@given(raw_text, st.sampled_from(["5", "15", "1,5", "-5", "5.0", "\\frac{1}{5}", "x", "5\\%", ".5"]),
       st.sampled_from(MATH_SOURCES + DAPO_SOURCES))
def test_raw_text_verl_pays_we_pay(response, truth, data_source):
    """On any text with one answer, what verl pays is paid; an answer that is no number is paid only as verl pays
    it written alone."""
    fmt = answer_format(data_source)
    ours = final_answer_score(data_source, response, truth)
    if _one_answer(response, fmt) and verl_pays(data_source, response, truth):
        assert ours["exact_match"] == 1
    final = extract_final_answer(response, fmt)
    if ours["exact_match"] and final.number is None:
        assert _verl_pays_alone(fmt, final, truth)


@pytest.mark.parametrize(
    "data_source, response, truth",
    [
        ("math_dapo", "Answer: .75", "0.75"),
        ("HuggingFaceH4/MATH-500", "\\boxed{1,234}", "1234"),
        ("HuggingFaceH4/MATH-500", "\\boxed{18\\%}", "0.18"),  # a percent sign is decoration, not a /100
        ("lighteval/MATH", "\\boxed{\\text{18}}", "18"),
        ("lighteval/MATH", "\\boxed{\\$-5.0}", "-5"),
        ("math_dapo", "Answer: 18." + "\nso" + "." * 400, "18"),
        ("math_dapo", "Answer: 1,000.0", "1000"),
        ("aime2024", "Answer: 18 \\text{apples}", "18"),
    ],
)
def test_what_verl_misses_and_equal_values_pay(data_source, response, truth):
    paid = verl_pays(data_source, response, truth)
    ours = final_answer_score(data_source, response, truth)["exact_match"]
    assert not paid and ours == (truth != "0.18")


def test_several_boxes_the_last_is_the_answer():
    response = "First \\boxed{5}, no: \\boxed{6}"
    for fmt_source in ("HuggingFaceH4/MATH-500", "math_dapo"):
        assert final_answer_score(fmt_source, response, "5")["exact_match"] == 0
        assert final_answer_score(fmt_source, response, "6")["exact_match"] == 1
    hedged = "Answer: 5\nor rather\nAnswer: 6"
    assert [final_answer_score("aime24", hedged, truth)["exact_match"] for truth in "56"] == [0, 1]


# Pieces of TeX answers that verl's normalisations act on, joined at random.
TEX_PIECES = ("\\frac", "frac", "\\dfrac", "tfrac", "\\sqrt", "sqrt", "\\text{", "\\text{ ", "\\textbf{",
              "\\overline{", "\\boxed{", "\\mbox{", "{", "}", "$", "\\$", "\\%", "\\\\%", "%", "=", "/", ".", " .",
              "{.", " ", "\n", "0", "1", "2", "12", "-", ",", "{,}", ",\\!", "\\!", "a ", "an ", "x", "k", "\\left(",
              "\\right)", "^\\circ", "^{\\circ}", "\\\\", "\\", "cm", "units", "\\text{m}", "\\text{and}", "0.5",
              "\\ldots", "\\;")
tex = st.lists(st.sampled_from(TEX_PIECES), max_size=8).map("".join)


@settings(max_examples=1500, **SETTINGS)
@given(tex)
def test_normal_forms_are_verls(text):
    """The re-implemented normalisations give verl's results on TeX-like text (None where verl's raises)."""
    try:
        expected = math_reward.strip_string(text)
    except (AssertionError, IndexError):
        expected = None
    assert formats_module.math_normal_form(text) == expected
    assert formats_module.dapo_normal_form(text) == math_dapo.normalize_final_answer(text)


# ---------------------------------------------------------------- NTL on the digits inside the box


@pytest.fixture(scope="module")
def tokenizer():
    return qwen2_5_tokenizer()


@pytest.mark.parametrize("data_source, response, truth", [
    ("HuggingFaceH4/MATH-500", "3 + 4 = 7, so 1,2 \\boxed{\\$1{,}234.5} and 99 more", "1234.5"),
    ("math_dapo", "3 + 4 = 7\nAnswer: -12.5\\%\n99 more", "-12.5"),
])
def test_ntl_reads_the_digits_inside_the_answer(tokenizer, data_source, response, truth):
    """Planted probabilities: the answer's digits have p(ground-truth digit) 0.5, every other digit 0.01 (a loss
    that counted them would show it)."""
    ids = tokenizer.encode(response, add_special_tokens=False)
    final = extract_final_answer(response, answer_format(data_source))
    digit_rows = [t for t, token in enumerate(ids) if token in DIGIT_IDS]
    first = sum(c.isdigit() for c in response[: final.number.start])
    answer_rows = set(digit_rows[first: first + len(re.sub("[^0-9]", "", truth))])
    log_probs = torch.full((len(ids), 10), math.log(0.99 / 9))
    for t, token in enumerate(ids):
        if token in DIGIT_IDS:
            digit = DIGIT_IDS.index(token)
            log_probs[t] = math.log(0.5 / 9)
            log_probs[t, digit] = math.log(0.5) if t in answer_rows else math.log(0.01)
    ntl_info = {"digit_log_probs": log_probs, "response_ids": ids, "digit_ids": DIGIT_IDS}
    result = final_answer_score(data_source, response, truth, ntl_info=ntl_info, method="nll")
    assert result["exact_match"] == 1 and result["ntl_digits"] == len(answer_rows)
    assert result["ntl_loss"] == pytest.approx(-math.log(0.5), rel=1e-5)


def form_b(tokenizer, response, fill):
    ids = tokenizer.encode(response, add_special_tokens=False)
    return {"digit_log_probs": torch.full((len(ids), 10), fill), "response_ids": ids, "digit_ids": DIGIT_IDS}


def test_an_answer_that_is_no_number_gets_verls_verdict_whatever_the_ntl_input(tokenizer):
    response = "So 2 + 3 \\boxed{\\frac12}"
    for score in (final_answer_score, all_tokens_score):
        for ntl_info in (None, {"ntl_loss": 0.5}, form_b(tokenizer, response, math.nan)):
            for truth, paid in (("\\frac{1}{2}", 1.0), ("0.5", 1.0), ("\\frac{1}{3}", 0.0)):
                result = score("lighteval/MATH", response, truth, ntl_info=ntl_info)
                assert (result["score"], result["exact_match"]) == (paid, paid)
                assert (result["ntl_status"], result["ntl_available"]) == ("answer_not_a_number", 0)


def test_a_number_against_a_ground_truth_that_is_none_gets_verls_verdict(tokenizer):
    """Final mode has no digits to align with "\\frac{1}{2}": the score is verl's verdict (0.5 = 1/2 there)."""
    response = "\\boxed{0.5}"
    for truth, paid in (("\\frac{1}{2}", 1.0), ("\\frac{1}{3}", 0.0)):
        result = final_answer_score("lighteval/MATH", response, truth, ntl_info=form_b(tokenizer, response, -2.3))
        assert (result["score"], result["ntl_status"]) == (paid, "ground_truth_not_a_number")


# ---------------------------------------------------------------- linear time


def test_format_patterns_cannot_backtrack():
    """Only possessive repeats, no alternation: one attempt reads each character at most once. The ``Answer:``
    marker search starts each attempt at a ":" only, and a whitespace run follows one ":", so one search of the
    reversed response reads each character O(1) times."""
    backtracking = {sre_parser.MAX_REPEAT, sre_parser.MIN_REPEAT, sre_parser.BRANCH, sre_parser.GROUPREF,
                    sre_parser.GROUPREF_EXISTS}
    for name in ("_REVERSED_ANSWER_MARKER", "_LEADING_SPACE", "_NUMBER", "_ASCII_DIGIT", "_FRAC_SHORTHAND",
                 "_SQRT_SHORTHAND"):
        opcodes = list(_opcodes(sre_parser.parse(getattr(formats_module, name).pattern)))
        assert not [op for op, _ in opcodes if op in backtracking], name
    first = sre_parser.parse(formats_module._REVERSED_ANSWER_MARKER.pattern)[0]
    assert first == (sre_parser.LITERAL, ord(":"))


SIZE = 256 * 1024
RUNAWAY = {
    "unclosed_box": "\\boxed{" + "{" * SIZE,
    "nested_box": "\\boxed{" + "{" * (SIZE // 2) + "}" * (SIZE // 2),
    "boxes": "\\boxed{" * (SIZE // 7),
    "digit_box": "\\boxed{" + "1" * SIZE + "}",
    "separator_box": "\\boxed{" + "1," * (SIZE // 2) + "}",
    "unit_box": "\\boxed{5\\text{" + "m" * SIZE + "}}",
    "spaced_box": "\\boxed " + "x" * SIZE,
    "marker_spaces": "Answer:" + " " * SIZE,
    "marker_newlines": "Answer:" + "\n" * SIZE,
    "colons": ":" * SIZE,
    "answers": "answer" * (SIZE // 6),
    "fracs": "Answer: " + "\\frac" * (SIZE // 5),
    "dollars": "Answer: " + "$" * SIZE,
    "texts": "Answer: " + "\\text{" * (SIZE // 6),
    "equals": "Answer: " + "=" * SIZE,
}


@pytest.mark.parametrize("data_source", ["HuggingFaceH4/MATH-500", "math_dapo"])
def test_runaway_responses_score_in_linear_time(data_source):
    """Quadratic work would take minutes at 256 KiB; each call must stay well under a second (bound 5 s)."""
    for shape, response in RUNAWAY.items():
        for score, truth in ((final_answer_score, "\\frac{1}{2}"), (all_tokens_score, "18")):
            started = time.perf_counter()
            result = score(data_source, response, truth, ntl_info={"ntl_loss": 0.5})
            assert time.perf_counter() - started < 5.0, (shape, score.__module__)
            assert 0.0 <= result["score"] <= 1.0 and result["exact_match"] == 0, shape
    assert extract_final_answer(RUNAWAY["digit_box"], BOXED).number.text == "1" * SIZE
    assert extract_final_answer(RUNAWAY["marker_spaces"], DAPO).text == " "
