"""ntl_reward property tests (hypothesis, derandomized): extraction vs verl, and never a crash or a bad score.

About 10,900 generated examples: most use a precomputed loss or no ntl_info (fast); form (b) examples run the
kernels under the Triton interpreter, so there are few of them.
"""

import math
from decimal import Decimal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from ntl_reward import extract_answer
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.final_answer import compute_score as final_answer_score

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Pieces that stress the extraction: markers, number syntax, unicode digits (Arabic-Indic, fullwidth, superscript).
PIECES = ["####", "#### ", "#####", " ", "\n", "\t", "$", ",", ".", "-", "*", "18", "1,234", "0", "007", "3.50",
          "answer", "٣", "１８", "²", "½", "#", "1e5", "\u200b"]
fragment = st.one_of(st.sampled_from(PIECES), st.text(max_size=6), st.integers(-10**6, 10**6).map(str))
short_response = st.lists(fragment, max_size=30).map("".join)
# Up to ~100k characters, built by repetition so generation stays cheap.
long_response = st.builds(lambda head, chunk, times, tail: head + chunk * times + tail,
                          short_response, short_response.filter(bool), st.integers(1, 5000), short_response)
response = st.one_of(short_response, short_response, long_response.map(lambda s: s[:100_000]))
ground_truth = st.one_of(
    st.integers(-10**9, 10**9).map(str), st.sampled_from(["18", "1234", "-3", "2.5", "0", "", "18.0", "$5", "١٨"]),
    st.text(max_size=8), st.integers(), st.floats(), st.none(),
)
loss_value = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(), st.integers(-5, 50))
ntl_info = st.one_of(
    st.none(), st.just({}), st.fixed_dictionaries({"ntl_loss": loss_value}),
    st.fixed_dictionaries({"unrelated": st.integers()}),
)
tau = st.one_of(st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False),
                st.integers(1, 10))


def verl_strict_score(solution, truth):
    from verl.utils.reward_score import gsm8k

    return gsm8k.compute_score(solution, truth, method="strict")


def check_result(result):
    assert isinstance(result["score"], float) and math.isfinite(result["score"]) and 0.0 <= result["score"] <= 1.0
    assert result["exact_match"] in (0, 1)
    # no value is None (verl 0.7 - 0.9.0 average every non-string column): 0.0 / "" stand for "none"
    assert math.isfinite(result["ntl_loss"]) and result["ntl_loss"] >= 0
    assert result["ntl_available"] or result["ntl_loss"] == 0.0
    assert isinstance(result["pred"], str) and None not in result.values()


@settings(max_examples=6000, **SETTINGS)
@given(response, ground_truth, ntl_info, tau, st.sampled_from(["strict", "flexible"]))
def test_never_raises_and_score_always_finite(solution, truth, info, temperature, extraction):
    final = final_answer_score("gsm8k", solution, truth, ntl_info=info, tau=temperature, extraction=extraction)
    every = all_tokens_score("gsm8k", solution, truth, ntl_info=info, tau=temperature, extraction=extraction)
    check_result(final)
    check_result(every)
    assert final["exact_match"] == every["exact_match"]
    if not final["ntl_available"]:  # NTL unavailable: Final 0; All falls back to exact match unless it is broken
        fallback = float(every["exact_match"]) if every["ntl_status"] == "missing" else 0.0
        assert final["score"] == 0.0 and every["score"] == fallback
    else:
        assert final["score"] == pytest.approx(math.exp(-final["ntl_loss"] / temperature))
        assert every["score"] == pytest.approx(every["exact_match"] * final["score"])
    loss = info.get("ntl_loss") if info else None
    if loss is not None and not (math.isfinite(loss) and loss >= 0):
        assert final["ntl_status"] == "invalid_loss"


@settings(max_examples=4000, **SETTINGS)
@given(response, st.booleans(), ground_truth)
def test_everything_verl_strict_scores_correct_with_one_answer_is_an_exact_match(solution, use_verl_answer, truth):
    """One ``####`` marker in the response: one answer. With half the ground truths set to verl's own extraction,
    verl-correct cases are plentiful. Ground truths without a digit ("." against "#### .") are not answers."""
    from verl.utils.reward_score import gsm8k

    solution = solution.replace("####", "", solution.count("####") - 1)  # keep the last marker only
    verl_answer = gsm8k.extract_solution(solution, method="strict")
    if use_verl_answer and verl_answer is not None:
        truth = verl_answer
    result = all_tokens_score("gsm8k", solution, truth)
    if verl_strict_score(solution, truth) == 1.0 and any(c in "0123456789" for c in truth):
        assert result["exact_match"] == 1


answer_text = st.integers(-10**6, 10**6).map(str)


@settings(max_examples=1500, **SETTINGS)
@given(short_response.map(lambda s: s.replace("#", "")), answer_text, answer_text, short_response.map(
    lambda s: s.replace("#", "")), st.sampled_from(["#### ", "####", "**#### ", "#### $"]),
       st.sampled_from(["#### ", "####", "\n####", " #### $"]), ntl_info)
def test_an_earlier_right_answer_followed_by_another_earns_nothing(prefix, truth, other, middle, first_marker,
                                                                    last_marker, info):
    """Hedging: the ground truth given first, a different final answer after it: exact match 0 in both modes,
    All scores 0, and the prediction is the final answer."""
    if Decimal(other) == Decimal(truth):
        other = str(int(other) + 1)
    middle = middle.lstrip("0123456789.,")  # keep the first answer's number whole
    solution = f"{prefix}\n{first_marker}{truth}{middle}{last_marker}{other}"
    final = final_answer_score("gsm8k", solution, truth, ntl_info=info)
    every = all_tokens_score("gsm8k", solution, truth, ntl_info=info)
    assert final["exact_match"] == every["exact_match"] == 0
    assert every["score"] == 0.0
    assert final["pred"] == every["pred"] == other


@settings(max_examples=800, **SETTINGS)
@given(short_response, st.integers(-10**12, 10**12), st.sampled_from(["", ".", ".0", ".00"]),
       st.sampled_from(["#### ", "####", "#### $", "**#### "]), st.booleans())
def test_the_last_marked_number_is_compared_as_a_number(prefix, value, decimals, marker, commas):
    number = f"{value:,}" if commas else str(value)
    solution = f"{prefix.replace('#', '')}\n{marker}{number}{decimals}"
    assert Decimal(extract_answer(solution).text) == value
    assert all_tokens_score("t", solution, str(value))["exact_match"] == 1
    assert all_tokens_score("t", solution, str(value + 1))["exact_match"] == 0


DIGIT_IDS = list(QWEN2_5_DIGIT_IDS)


@settings(max_examples=60, **SETTINGS)
@given(short_response.map(lambda s: s[:80]), st.sampled_from(["18", "186", "0", "2.5", "-7", "x"]),
       st.integers(0, 2**31), st.sampled_from(["nll", "confidence", "was", "mse"]))
def test_form_b_never_raises_on_malformed_responses(solution, truth, seed, method):
    """Real Qwen2.5 ids of the generated text (what verl decodes), random digit log-probs (interpreted kernels)."""
    tokenizer = qwen2_5_tokenizer()
    ids = tokenizer.encode(solution, add_special_tokens=False)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    log_probs = torch.log_softmax(torch.randn(len(ids), 10, generator=torch.Generator().manual_seed(seed)), -1)
    info = {"digit_log_probs": log_probs, "response_ids": ids, "digit_ids": DIGIT_IDS}
    final = final_answer_score("t", text, truth, ntl_info=info, method=method)
    every = all_tokens_score("t", text, truth, ntl_info=info, method=method)
    for result in (final, every):
        check_result(result)
    assert final["ntl_status"] in ("ok", "ground_truth_not_a_number")
    assert every["ntl_status"] in ("ok", "no_digit_positions")
    assert every["ntl_digits"] == sum(token in DIGIT_IDS for token in ids)
