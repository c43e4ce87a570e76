"""Place-value targets of number tokens (issue 17 items 3, 4): any cut of an answer into 1-3 digit tokens, on
Llama-3's 1,110 number tokens and Qwen2.5's 10 digits, in the Final and All rewards and the loss targets."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntl_kernels import llama3_tokenizer, number_tokens, qwen2_5_tokenizer
from ntl_reward import (
    check_reward_kwargs,
    final_answer_places,
    final_answer_targets,
    number_token_places,
    parse_ntl_info,
    place_weights,
)
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.final_answer import compute_score as final_answer_score

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PREFIX = "Natalia sold 48/2 = <<48/2=24>>24 clips in May, 1,234.5 in all.\n#### "
MISSING_NLL = -math.log(1e-8)  # a planted row's nll; its was is 9


@pytest.fixture(scope="module", params=["llama3", "qwen2.5"])
def kind(request):
    tokenizer = llama3_tokenizer() if request.param == "llama3" else qwen2_5_tokenizer()
    return request.param, tokenizer, number_tokens(tokenizer)


@pytest.fixture(scope="module")
def llama3():
    return llama3_tokenizer(), number_tokens(llama3_tokenizer())


def _cut(digits: str, cuts: list[int], merge: bool) -> list[str]:
    """``digits`` cut into pieces of 1-3 digits (sizes cycling through ``cuts``), or one digit each."""
    pieces, start, k = [], 0, 0
    while start < len(digits):
        size = min(cuts[k % len(cuts)], len(digits) - start) if merge else 1
        pieces.append(digits[start : start + size])
        start, k = start + size, k + 1
    return pieces


def _response(tokenizer, numbers, integer: str, fraction: str, cuts: list[int]):
    """(text, ids, answer pieces): PREFIX tokenized as the tokenizer does, then the answer as the given cut."""
    merge = len(numbers) > 10
    ids = tokenizer.encode(PREFIX, add_special_tokens=False)
    pieces = _cut(integer, cuts, merge)
    answer_ids = [int(numbers.ids[numbers.slot(p)]) for p in pieces]
    if fraction:
        fraction_pieces = _cut(fraction, cuts[::-1], merge)
        pieces += fraction_pieces
        answer_ids += tokenizer.encode(".", add_special_tokens=False)
        answer_ids += [int(numbers.ids[numbers.slot(p)]) for p in fraction_pieces]
    text = PREFIX + integer + ("." + fraction if fraction else "")
    return text, ids + answer_ids, pieces, len(ids)


def _expected_targets(integer, fraction, truth_integer, truth_fraction, pieces):
    """The place-value targets and the missing places, computed from padded strings (not the library's code)."""
    width = max(len(integer), len(truth_integer))
    padded_integer = truth_integer.zfill(width)[width - len(integer):]  # the truth's digits under the answer's
    decimals = max(len(fraction), len(truth_fraction))
    padded = padded_integer + truth_fraction.ljust(decimals, "0")[: len(fraction)]
    targets, start, places = [], 0, []
    for piece in pieces:
        targets.append(padded[start : start + len(piece)])
        places.append(len(integer) - 1 - start)
        start += len(piece)
    required_integer = truth_integer.lstrip("0") or "0"
    missing = list(range(len(integer), len(required_integer)))
    missing += [-1 - i for i in range(len(fraction), len(truth_fraction.rstrip("0")))]
    return targets, places, missing


def _expected_loss(rows, targets, numbers, method, missing, weights):
    log_probs = torch.log_softmax(rows.double(), -1)
    slots = torch.tensor([numbers.slot(t) for t in targets], dtype=torch.long)
    if method == "nll":
        q = -log_probs[torch.arange(len(slots)), slots]
    else:
        values = numbers.values.double()
        q = (log_probs.exp() * (values - values[slots, None]).abs()).sum(-1)
    q = torch.cat([q, torch.full((len(missing),), MISSING_NLL if method == "nll" else 9.0, dtype=torch.float64)])
    weights = torch.as_tensor(weights, dtype=torch.float64)
    return float((weights * q).sum() / weights.sum())


digits = st.text(alphabet="0123456789", min_size=1, max_size=7)
cut_sizes = st.lists(st.integers(1, 3), min_size=1, max_size=4)


@settings(max_examples=15, **SETTINGS)
@given(integer=digits.map(lambda d: d.lstrip("0") or "0"), fraction=st.sampled_from(["", "5", "25", "125"]),
       cuts=cut_sizes, method=st.sampled_from(["nll", "was"]), weighting=st.sampled_from(["none", "place"]),
       seed=st.integers(0, 2**16))
def test_any_cut_of_the_right_answer_is_its_own_target_and_scores_right(kind, integer, fraction, cuts, method,
                                                                        weighting, seed):
    name, tokenizer, numbers = kind
    text, ids, pieces, first = _response(tokenizer, numbers, integer, fraction, cuts)
    rows = torch.randn(len(ids), len(numbers), generator=torch.Generator().manual_seed(seed))
    truth = integer + ("." + fraction if fraction else "")
    positions = [t for t, token in enumerate(ids) if token in set(numbers.ids.tolist())]
    position_slots = [numbers.ids.tolist().index(ids[t]) for t in positions]
    targets = final_answer_targets(text, positions, truth, number_texts=numbers.texts, position_slots=position_slots)
    answer_positions = [t for t in positions if t >= first]
    assert list(targets) == answer_positions
    assert [numbers.texts[s] for s in targets.values()] == pieces  # the emitted tokens themselves

    info = {"digit_log_probs": rows, "response_ids": ids, "digit_ids": numbers.ids, "number_texts": numbers.texts}
    result = final_answer_score("openai/gsm8k", text, truth, {}, ntl_info=info, method=method,
                                place_weighting=weighting)
    places = list(final_answer_places(text, positions, truth, number_texts=numbers.texts,
                                      position_slots=position_slots).values())
    weights = place_weights(places, weighting)
    expected = _expected_loss(rows[answer_positions], pieces, numbers, method, [], weights)
    assert result["exact_match"] == 1 and result["ntl_status"] == "ok" and result["ntl_missing_digits"] == 0
    assert result["ntl_digits"] == len(pieces)
    assert result["ntl_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


@settings(max_examples=15, **SETTINGS)
@given(integer=digits, fraction=st.sampled_from(["", "0", "7", "05", "999"]), truth_integer=digits,
       truth_fraction=st.sampled_from(["", "5", "25", "50"]), cuts=cut_sizes, method=st.sampled_from(["nll", "was"]),
       weighting=st.sampled_from(["none", "place"]), seed=st.integers(0, 2**16))
def test_other_answers_get_the_ground_truths_digits_at_each_tokens_places(
        kind, integer, fraction, truth_integer, truth_fraction, cuts, method, weighting, seed):
    name, tokenizer, numbers = kind
    text, ids, pieces, first = _response(tokenizer, numbers, integer, fraction, cuts)
    rows = torch.randn(len(ids), len(numbers), generator=torch.Generator().manual_seed(seed))
    truth = truth_integer + ("." + truth_fraction if truth_fraction else "")
    targets, places, missing = _expected_targets(integer, fraction, truth_integer, truth_fraction, pieces)
    positions = [t for t, token in enumerate(ids) if token in set(numbers.ids.tolist())]
    position_slots = [numbers.ids.tolist().index(ids[t]) for t in positions]
    got = final_answer_targets(text, positions, truth, number_texts=numbers.texts, position_slots=position_slots)
    assert [numbers.texts[s] for s in got.values()] == targets
    assert list(final_answer_places(text, positions, truth, number_texts=numbers.texts,
                                    position_slots=position_slots).values()) == places

    info = {"digit_log_probs": rows, "response_ids": ids, "digit_ids": numbers.ids, "number_texts": numbers.texts}
    result = final_answer_score("openai/gsm8k", text, truth, {}, ntl_info=info, method=method,
                                place_weighting=weighting)
    weights = place_weights(places + missing, weighting)
    expected = _expected_loss(rows[list(got)], targets, numbers, method, missing, weights)
    assert result["ntl_status"] == "ok" and result["ntl_missing_digits"] == len(missing)
    assert result["ntl_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_a_wider_token_over_a_shorter_truth_targets_zero_padded_digits(llama3):
    tokenizer, numbers = llama3
    text = "#### 123"
    ids = tokenizer.encode(text, add_special_tokens=False)
    positions = [len(ids) - 1]
    slot = numbers.slot("123")
    assert final_answer_targets(text, positions, 99, number_texts=numbers.texts, position_slots=[slot]) == {
        positions[0]: numbers.slot("099")}
    assert final_answer_targets(text, positions, 4123, number_texts=numbers.texts, position_slots=[slot]) == {
        positions[0]: slot}  # the '4' has no token: a planted row in the reward, no position in the loss targets
    assert final_answer_targets(text, positions, "x", number_texts=numbers.texts, position_slots=[slot]) == {}
    # '12' across the text's "1" before the marker and the answer's "2": not this text's tokens, no targets.
    straddling = [numbers.slot("12"), numbers.slot("3")]
    assert final_answer_targets("1 #### 23", [0, 3], 23, number_texts=numbers.texts, position_slots=straddling) == {}
    with pytest.raises(ValueError, match="position_slots must hold one slot"):
        final_answer_targets(text, positions, 99, number_texts=numbers.texts, position_slots=[5000])


def test_all_mode_scores_every_llama3_number_token_as_its_own_target(llama3):
    tokenizer, numbers = llama3
    text = "She has 1,234.50 dollars and 2024 - 1999 = 25 years.\n#### 25"
    ids = tokenizer.encode(text, add_special_tokens=False)
    rows = torch.randn(len(ids), len(numbers), generator=torch.Generator().manual_seed(0))
    info = {"digit_log_probs": rows, "response_ids": ids, "digit_ids": numbers.ids, "number_texts": numbers.texts}
    slot_of_id = {int(i): s for s, i in enumerate(numbers.ids.tolist())}
    scored = [(t, slot_of_id[token]) for t, token in enumerate(ids) if token in slot_of_id]
    assert [numbers.texts[s] for _, s in scored] == ["1", "234", "50", "202", "4", "199", "9", "25", "25"]
    nll = -torch.log_softmax(rows.double(), -1)[[t for t, _ in scored], [s for _, s in scored]]
    places = [3, 2, -1, 3, 0, 3, 0, 1, 1]
    assert number_token_places(text, [len(numbers.texts[s]) for _, s in scored]) == places
    for weighting, weights in (("none", [1.0] * 9), ("place", [1 + max(p, 0) for p in places])):
        result = all_tokens_score("openai/gsm8k", text, "25", {}, ntl_info=info, place_weighting=weighting)
        weights = torch.tensor(weights, dtype=torch.float64)
        assert result["ntl_status"] == "ok" and result["ntl_digits"] == len(scored)
        assert result["ntl_loss"] == pytest.approx(float((weights * nll).sum() / weights.sum()), rel=1e-5)
    # The '234' token's id replaced by another token's: its digits are no longer covered, so nothing is guessed.
    broken = {**info, "response_ids": [0 if i == numbers.ids[numbers.slot("234")] else i for i in ids]}
    for score in (all_tokens_score, final_answer_score):
        assert score("openai/gsm8k", text, "25", {}, ntl_info=broken)["ntl_status"] == "digit_count_mismatch"


def test_number_token_places_and_place_weights():
    assert number_token_places("x 1,234.5 and 7", [1, 3, 1, 1]) == [3, 2, -1, 0]
    assert number_token_places("12 34", [2, 2]) == [1, 1]
    assert number_token_places("12 34", [3, 1]) is None  # a token across two numbers
    assert number_token_places("12", [1]) is None and number_token_places("1", [1, 1]) is None
    assert place_weights([3, 0, -2], "place").tolist() == [4.0, 1.0, 1.0]
    assert place_weights(torch.tensor([[3, 1]]), "none").tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="place_weighting must be one of"):
        place_weights([1], "exponential")
    assert check_reward_kwargs("all_tokens", {"place_weighting": "place"}) == {"place_weighting": "place"}
    with pytest.raises(ValueError, match="reward_kwargs.place_weighting must be one of"):
        check_reward_kwargs("final_answer", {"place_weighting": "log"})
    with pytest.raises(ValueError, match="place_weighting must be one of"):
        final_answer_score("openai/gsm8k", "#### 1", "1", {}, place_weighting="log")


@pytest.mark.parametrize(("extra", "match"), [
    ({"digit_ids": list(range(100, 210)), "number_texts": [str(v) for v in range(10)] + [f"{v:02d}" for v in
                                                                                       range(99)] + ["x"]},
     "1-3 ASCII digits"),
    ({"digit_ids": list(range(100, 150)), "number_texts": [str(v) for v in range(10)] + [f"{v:02d}" for v in
                                                                                       range(40)]},
     "every digit string of each length"),
    ({"digit_ids": list(range(100, 211))}, "must be 10 integer token ids"),
    ({"digit_ids": list(range(100, 110)), "number_texts": "0123456789"}, "sequence of digit strings"),
])
def test_number_texts_that_cannot_hold_place_value_targets_are_refused(extra, match):
    size = len(extra["digit_ids"])
    with pytest.raises(ValueError, match=match):
        parse_ntl_info({"digit_log_probs": torch.zeros(2, size), "response_ids": [1, 2], **extra})
