"""ntl_reward at the edges: runaway responses (linear-time extraction), broken NTL input, numpy ground truths,
extreme tau schedules and the check of the user's reward_kwargs."""

import inspect
import math
import re
import time
from decimal import Decimal
from re import _constants as sre_constants
from re import _parser as sre_parser

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.bench_reward import runaway_responses
from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from ntl_reward import TauSchedule, check_reward_kwargs, check_tau, extract_answer
from ntl_reward import answer as answer_module
from ntl_reward import place_value
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.answer import decimal_digits, ground_truth_text
from ntl_reward.final_answer import compute_score as final_answer_score
from ntl_reward.options import REWARD_OPTIONS
from ntl_reward.scoring import answer_distance

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIGIT_IDS = list(QWEN2_5_DIGIT_IDS)
MIB = 1 << 20


# ---------------------------------------------------------------- 3. linear-time answer extraction

# The extraction of 96e1393, forward regexes that backtrack: the oracle for what a final answer is.
_OLD_NUMBER = r"-?[0-9.,]*[0-9][0-9.,]*"
_OLD_PATTERNS = {"strict": (re.compile(r"####[ \t*$]*(" + _OLD_NUMBER + ")"), 1),
                 "flexible": (re.compile(_OLD_NUMBER), 0)}


def old_extract(response, extraction):
    pattern, group = _OLD_PATTERNS[extraction]
    last = None
    for last in pattern.finditer(response):
        pass
    if last is None:
        return None
    return answer_module.Answer(answer_module.clean_number(last.group(group)), last.start(group), last.end(group))


# Dense in the characters the extraction cares about, plus unicode digits, NUL and letters.
EXTRACTION_ALPHABET = "####    -.,$*\t\n0123456789a٣１\x00"
structured_text = st.text(alphabet=EXTRACTION_ALPHABET, max_size=60)
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
mixed_text = st.lists(st.one_of(structured_text, any_text), max_size=6).map("".join)


@settings(max_examples=2500, **SETTINGS)
@given(mixed_text, st.sampled_from(["strict", "flexible"]))
def test_extraction_is_the_old_extraction_on_every_normal_input(response, extraction):
    assert extract_answer(response, extraction) == old_extract(response, extraction)


def _opcodes(parsed):
    """Every (opcode, argument) of a parsed pattern, nested ones included."""
    for op, av in parsed:
        yield op, av
        children = []
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT):
            children = [av[2]]
        elif op in (sre_constants.SUBPATTERN, sre_constants.ATOMIC_GROUP):
            children = [av[-1]]
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            children = [av[1]]
        elif op == sre_constants.BRANCH:
            children = av[1]
        for child in children:
            yield from _opcodes(child)


@pytest.mark.parametrize("module, name", [(answer_module, "_REVERSED_MARKED_NUMBER"),
                                          (answer_module, "_REVERSED_ANY_NUMBER"), (answer_module, "_PLAIN_DECIMAL"),
                                          (place_value, "_NUMBER_RUN")],
                         ids=["marked", "any", "plain_decimal", "place_value_run"])
def test_extraction_patterns_cannot_backtrack(module, name):
    """The work bound, by construction: only possessive repeats, no alternation, so one attempt reads each
    character at most once; the patterns searched for start with a lookbehind that lets an attempt begin only at
    the start of a run of number characters, so all attempts together read each character O(1) times."""
    pattern = getattr(module, name)
    opcodes = list(_opcodes(sre_parser.parse(pattern.pattern)))
    backtracking = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.BRANCH,
                    sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS}
    assert not [op for op, _ in opcodes if op in backtracking]
    if name != "_PLAIN_DECIMAL":  # used with fullmatch, anchored at its start
        first_op, (direction, lookbehind) = next((op, av) for op, av in opcodes if op != sre_constants.SUBPATTERN)
        assert first_op == sre_constants.ASSERT_NOT and direction == -1
        assert {op for op, _ in lookbehind} == {sre_constants.IN}


@pytest.mark.parametrize("size", [64 * 1024, MIB])
def test_runaway_responses_score_fast_in_every_mode(size):
    """compute_score end to end on ~1 MB responses of every shape (bench.bench_reward.runaway_responses): the old
    extraction took 7-11 s at 40 KB on runs of "." or "," and hours at 1 MB; each call here must take well under a
    second (bound: 5 s, for a loaded CI machine; bench/results/reward_cpu.md has the numbers)."""
    for shape, response in runaway_responses(size).items():
        for extraction in ("strict", "flexible"):
            for score, extra in ((final_answer_score, {"answer_credit": "distance"}), (all_tokens_score, {})):
                started = time.perf_counter()
                result = score("t", response, "18", ntl_info={"ntl_loss": 0.5}, extraction=extraction, **extra)
                elapsed = time.perf_counter() - started
                assert elapsed < 5.0, (shape, extraction, score.__module__, elapsed)
                assert 0.0 <= result["score"] <= 1.0 and result["exact_match"] == 0, shape
    responses = runaway_responses(size)
    assert extract_answer(responses["marker_then_digits"]).text == "9" * size
    assert extract_answer(responses["digits"], "flexible").text == "7" * size
    assert extract_answer(responses["marker_tabs_digit"]).text == "5"
    assert extract_answer(responses["dots_then_marker"]).text == "5"
    assert [extract_answer(responses[shape], e) for shape in ("dots", "hashes", "marker_dots") for e in
            ("strict", "flexible")] == [None] * 6


answer_text = st.from_regex(r"-?[0-9]{0,6}(\.[0-9]{0,4})?", fullmatch=True)


def _place_digits(digits):
    places = {len(digits.integer) - 1 - i: int(d) for i, d in enumerate(digits.integer)}
    places.update({-1 - i: int(d) for i, d in enumerate(digits.fraction)})
    return places


@settings(max_examples=500, **SETTINGS)
@given(answer_text, answer_text)
def test_answer_distance_is_the_mean_over_the_union_of_places(answer, truth):
    """The definition, with a dict per number (what 96e1393 computed, O(answer) Python objects)."""
    truth_digits = decimal_digits(truth)
    if truth_digits is None:
        return
    trimmed = truth_digits._replace(integer=truth_digits.integer.lstrip("0") or "0",
                                    fraction=truth_digits.fraction.rstrip("0"))
    emitted = decimal_digits(answer)
    expected = None
    if emitted is not None:
        answer_places, truth_places = _place_digits(emitted), _place_digits(trimmed)
        distances = [abs(d - truth_places.get(p, 0)) for p, d in answer_places.items()]
        distances += [9] * len(truth_places.keys() - answer_places.keys())
        expected = sum(distances) / len(distances)
    assert answer_distance(answer, truth_digits) == pytest.approx(expected)


# ---------------------------------------------------------------- 4. broken NTL input never pays

@pytest.fixture(scope="module")
def tokenizer():
    return qwen2_5_tokenizer()


def form_b(ids, log_probs, digit_ids=DIGIT_IDS):
    return {"digit_log_probs": log_probs, "response_ids": ids, "digit_ids": digit_ids}


def all_scores(response, truth, info, method=None):
    """Every score of a response: All mode and Final mode with each answer credit."""
    extra = {} if method is None else {"method": method}
    results = [all_tokens_score("t", response, truth, ntl_info=info, **extra)]
    results += [final_answer_score("t", response, truth, ntl_info=info, answer_credit=credit, **extra)
                for credit in ("none", "exact_match", "distance")]
    return results


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_digit_log_probs_score_zero_in_both_modes(tokenizer, bad):
    """A right answer with NaN/inf digit log-probs: 96e1393 paid All mode 1.0, above any healthy response."""
    ids = tokenizer.encode("#### 18", add_special_tokens=False)
    log_probs = torch.log_softmax(torch.zeros(len(ids), 10), -1)
    log_probs[[t for t, token in enumerate(ids) if token in DIGIT_IDS], 8] = bad  # the target of "8", all modes
    for result in all_scores("#### 18", "18", form_b(ids, log_probs), method="nll"):
        assert (result["score"], result["ntl_status"], result["ntl_non_finite"]) == (0.0, "non_finite", 1)


@pytest.mark.parametrize("digit_ids", [list(range(1000, 1010)), [DIGIT_IDS[0], *range(1000, 1009)]])
def test_digit_tokens_that_are_not_the_texts_digits_score_zero(tokenizer, digit_ids):
    """Wrong digit_ids: no (or too few) digit tokens though the text has digits. 96e1393 paid All mode 1.0."""
    ids = tokenizer.encode("#### 18", add_special_tokens=False)
    log_probs = torch.log_softmax(torch.zeros(len(ids), 10), -1)
    for result in all_scores("#### 18", "18", form_b(ids, log_probs, digit_ids)):
        assert (result["score"], result["ntl_status"], result["ntl_non_finite"]) == (0.0, "digit_count_mismatch", 0)


def test_only_a_missing_ntl_info_leaves_all_mode_its_exact_match():
    for info in (None, {}, {"ntl_loss": None}):
        assert all_tokens_score("t", "#### 18", "18", ntl_info=info)["score"] == 1.0
    for loss in (math.nan, math.inf, -math.inf, -1.0):
        assert all_tokens_score("t", "#### 18", "18", ntl_info={"ntl_loss": loss})["score"] == 0.0


CORRUPTIONS = ("nan", "+inf", "-inf_target", "-inf_row", "wrong_ids", "shorter", "longer")
PIECES = ["#### ", "####", "\n", " ", "18", "7", "1,234", "3.5", "-2", "x", "$", "The answer is "]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=40, **SETTINGS)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join), st.sampled_from(["18", "7", "3.5"]),
       st.integers(0, 2**31), st.sampled_from(CORRUPTIONS), st.sampled_from(["nll", "confidence", "was", "mse"]))
def test_a_corrupted_ntl_input_never_scores_above_the_clean_one(tokenizer, response, truth, seed, corruption, method):
    """Random corruptions of a healthy form (b) input (real Qwen2.5 ids, random digit log-probs): every score
    is finite, in [0, 1] and at most the clean input's, in both modes and with every answer credit."""
    generator = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode(response, add_special_tokens=False)
    log_probs = torch.log_softmax(torch.randn(len(ids), 10, generator=generator), -1)
    clean = all_scores(response, truth, form_b(ids, log_probs), method)
    row = int(torch.randint(len(ids), (), generator=generator))
    digit = int(torch.randint(10, (), generator=generator))
    bad_ids, bad_log_probs, digit_ids = list(ids), log_probs.clone(), DIGIT_IDS
    if corruption == "nan":
        bad_log_probs[row, digit] = math.nan
    elif corruption == "+inf":
        bad_log_probs[row, digit] = math.inf
    elif corruption == "-inf_target":  # the row's own digit, or digit 0 on a non-digit token
        bad_log_probs[row, DIGIT_IDS.index(ids[row]) if ids[row] in DIGIT_IDS else 0] = -math.inf
    elif corruption == "-inf_row":
        bad_log_probs[row] = -math.inf
    elif corruption == "wrong_ids":
        digit_ids = list(range(1000, 1010))
    elif corruption == "shorter":  # ids and log-probs cut together: not this text's tokens any more
        bad_ids, bad_log_probs = ids[:row], log_probs[:row]
    else:
        bad_ids, bad_log_probs = ids + [DIGIT_IDS[digit]], torch.cat([log_probs, log_probs[-1:]])
    broken = all_scores(response, truth, form_b(bad_ids, bad_log_probs, digit_ids), method)
    for before, after in zip(clean, broken, strict=True):
        assert isinstance(after["score"], float) and math.isfinite(after["score"])
        assert 0.0 <= after["score"] <= before["score"] + 1e-12, (corruption, before, after)
        if after["ntl_status"] in ("non_finite", "digit_count_mismatch"):
            assert after["score"] == 0.0


def test_log_probs_and_ids_of_different_lengths_are_a_value_error():
    for score in (final_answer_score, all_tokens_score):
        with pytest.raises(ValueError, match="without the digit dimension"):
            score("t", "#### 18", "18", ntl_info=form_b([15, 16, 17], torch.zeros(2, 10)))


# ---------------------------------------------------------------- 6. numpy ground truths, tau, reward_kwargs

@pytest.mark.parametrize("truth, text", [
    (np.int64(18), "18"), (np.int32(-3), "-3"), (np.uint8(7), "7"), (np.float64(18.0), "18.0"),
    (np.float32(0.1), "0.1"), (np.float64(0.1), "0.1"), (np.float16(2.5), "2.5"), (np.float32(1e20), "1" + "0" * 20),
    (np.float64(1e-7), "0.0000001"), (18, "18"), (2.5, "2.5"), ("18", "18"), (np.str_("18"), "18"),
])
def test_numpy_ground_truths_are_answers(truth, text):
    """Parquet columns come back as numpy scalars; 96e1393 left them unpaid (np.int64) or crashed on
    ``repr(np.float64(x))`` = "np.float64(x)" (numpy 2)."""
    assert ground_truth_text(truth) == text
    response = f"#### {text}"
    assert all_tokens_score("t", response, truth)["exact_match"] == 1
    assert final_answer_score("t", response, truth, answer_credit="exact_match")["score"] == 0.5
    assert all_tokens_score("t", "#### 19", truth)["exact_match"] == 0


@pytest.mark.parametrize("truth", [np.float64(np.nan), np.float32(np.inf), np.bool_(True), True, None, b"18", [18]])
def test_ground_truths_that_are_no_number_are_no_answer(truth):
    assert ground_truth_text(truth) is None
    assert all_tokens_score("t", "#### 18", truth)["exact_match"] == 0


positive_float = st.floats(min_value=5e-324, max_value=1.7976931348623157e308, allow_nan=False)


@settings(max_examples=800, **SETTINGS)
@given(positive_float, positive_float, st.one_of(st.integers(1, 10), st.integers(1, 10**30)), st.data())
def test_linear_schedule_is_finite_positive_between_its_knots(start, end, total_steps, data):
    """96e1393: start=1.7e308, end=1 gave -inf halfway (t0 + (t1 - t0) * w overflows); huge step counts too."""
    schedule = TauSchedule.linear(start, end, total_steps)
    step = data.draw(st.one_of(st.integers(0, 2 * total_steps), st.sampled_from([0, 1, total_steps - 1, total_steps])))
    tau = schedule.tau_at(step)
    assert math.isfinite(tau) and min(start, end) <= tau <= max(start, end) and tau > 0


BAD_TAUS = [math.nan, math.inf, -math.inf, 0, 0.0, -1.0, True, False, "1.0", None, 10**400, [1.0], Decimal("1")]


@pytest.mark.parametrize("bad", BAD_TAUS, ids=lambda value: repr(value)[:12])
@pytest.mark.parametrize("field, build", [
    ("tau", lambda tau: TauSchedule.constant(tau)),
    ("start", lambda tau: TauSchedule.linear(tau, 1.0, 10)),
    ("end", lambda tau: TauSchedule.linear(1.0, tau, 10)),
    ("milestones[5]", lambda tau: TauSchedule.step({0: 1.0, 5: tau})),
    ("taus[1]", lambda tau: TauSchedule((0, 5), (1.0, tau))),
    ("reward_kwargs.tau", lambda tau: check_reward_kwargs("final_answer", {"tau": tau})),
    ("my_tau", lambda tau: check_tau(tau, "my_tau")),
])
def test_bad_taus_are_refused_naming_the_field(field, build, bad):
    with pytest.raises(ValueError, match=re.escape(f"{field} must be a positive finite number")):
        build(bad)


@pytest.mark.parametrize("mode", ["final_answer", "all_tokens"])
def test_reward_kwargs_check_accepts_the_options_of_compute_score(mode):
    score = final_answer_score if mode == "final_answer" else all_tokens_score
    keyword_only = [name for name, parameter in inspect.signature(score).parameters.items()
                    if parameter.kind == parameter.KEYWORD_ONLY and name != "ntl_info"]
    assert list(REWARD_OPTIONS[mode]) == keyword_only
    options = {"tau": np.float32(0.5), "method": "was", "extraction": "flexible"}
    if mode == "final_answer":
        options["answer_credit"] = "distance"
    checked = check_reward_kwargs(f"/somewhere/ntl_reward/{mode}.py", options)
    assert checked == {**options, "tau": 0.5} and type(checked["tau"]) is float
    assert check_reward_kwargs(mode, None) == {} == check_reward_kwargs(mode, {})
    assert check_reward_kwargs(mode, {"method": None}) == {"method": None}
    # What verl itself passes on every call is still accepted (and ignored) by compute_score.
    result = score("openai/gsm8k", "#### 18", "18", {}, reward_router_address="127.0.0.1:1",
                   reward_model_tokenizer=None, **options)
    assert result["exact_match"] == 1


@pytest.mark.parametrize("mode, options, message", [
    ("final_answer", {"taus": 0.5}, "unknown option reward_kwargs.taus for the final_answer reward; it accepts "
     "reward_kwargs.tau, reward_kwargs.method, reward_kwargs.extraction, reward_kwargs.answer_credit"),
    ("all_tokens", {"answer_credit": "distance"}, "unknown option reward_kwargs.answer_credit"),
    ("all_tokens", {"tau": 1.0, "reward_router_address": "x"}, "unknown option reward_kwargs.reward_router_address"),
    ("final_answer", {"method": "l1"}, "reward_kwargs.method must be one of"),
    ("final_answer", {"extraction": "loose"}, "reward_kwargs.extraction must be one of"),
    ("final_answer", {"answer_credit": "em"}, "reward_kwargs.answer_credit must be one of"),
    # verl passes reward_kwargs on every call of compute_score (rollout, validation): a schedule goes in ntl.tau
    ("final_answer", {"tau": {"kind": "linear", "start": 2.0, "end": 0.5, "total_steps": 9}},
     "reward_kwargs.tau must be a number (verl passes it on every call); a schedule goes in ntl.tau"),
    ("final_answer", [("tau", 1.0)], "reward_kwargs must be a mapping"),
    ("last_token", {}, "the reward mode must be one of"),
    ("/x/ntl_reward/scoring.py", {}, "the reward mode must be one of"),
])
def test_reward_kwargs_check_refuses_naming_the_key(mode, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_reward_kwargs(mode, options)


def test_reward_kwargs_check_reads_an_omegaconf_config():
    from omegaconf import OmegaConf

    config = OmegaConf.create({"tau": 0.5, "method": "nll"})
    assert check_reward_kwargs("all_tokens", config) == {"tau": 0.5, "method": "nll"}
    key = "reward.custom_reward_function.reward_kwargs"
    with pytest.raises(ValueError, match=re.escape(f"{key}.taus")):
        check_reward_kwargs("all_tokens", OmegaConf.create({"taus": 1.0}), key=key)
