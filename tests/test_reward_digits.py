"""ntl_reward form (b): the loss computed from digit log-probs of real Qwen2.5 token ids, hand-computed values."""

import math
import re

import pytest
import torch

from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from ntl_reward import compute_scores
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.final_answer import compute_score as final_answer_score

DIGIT_IDS = list(QWEN2_5_DIGIT_IDS)
BAD = 0.01  # probability planted on the target of positions that must not be counted


@pytest.fixture(scope="module")
def tokenizer():
    return qwen2_5_tokenizer()


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def planted_row(target, p_target):
    """Digit log-probs with p(target) = p_target and the rest spread evenly over the other 9 digits."""
    row = torch.full((10,), math.log((1 - p_target) / 9), dtype=torch.float32)
    row[target] = math.log(p_target)
    return row


def planted(ids, plan):
    """[L, 10] rows: plan maps position -> (target digit, p_target); every other position gets p(own digit)=BAD."""
    rows = []
    for t, token in enumerate(ids):
        own = DIGIT_IDS.index(token) if token in DIGIT_IDS else 0
        rows.append(planted_row(*plan.get(t, (own, BAD))))
    return torch.stack(rows) if rows else torch.zeros(0, 10)


def info(ids, log_probs, **extra):
    return {"digit_log_probs": log_probs, "response_ids": ids, "digit_ids": DIGIT_IDS, **extra}


def digit_positions(ids):
    return [t for t, token in enumerate(ids) if token in DIGIT_IDS]


def was_of_planted(target, p_target):
    """sum_i p_i |i - target| for planted_row(target, p_target), by hand."""
    return (1 - p_target) / 9 * sum(abs(i - target) for i in range(10))


def mse_of_planted(target, p_target):
    mean_digit = p_target * target + (1 - p_target) / 9 * sum(i for i in range(10) if i != target)
    return (mean_digit - target) ** 2


RESPONSE = "She has 3 * 6 = 18 apples.\n#### 18"


def test_qwen_tokens_holding_ascii_digits_are_exactly_the_ten_digit_tokens(tokenizer):
    """What the text-to-token mapping of the final answer relies on (byte-level tokens keep ASCII as is)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    with_digits = [i for i, token in enumerate(tokens) if re.search("[0-9]", token)]
    assert with_digits == DIGIT_IDS


def test_final_answer_planted_doc_example_2(tokenizer):
    """The document's example: P(1)=0.7, P(8)=0.6, P(6)=0.8 on "186" -> nll 0.364, confidence 0.357."""
    text = "Total: 100 + 86 = 186\n#### 186"
    ids = encode(tokenizer, text)
    answer = digit_positions(ids)[-3:]
    plan = dict(zip(answer, [(1, 0.7), (8, 0.6), (6, 0.8)]))
    log_probs = planted(ids, plan)
    nll = final_answer_score("t", text, "186", ntl_info=info(ids, log_probs), method="nll")
    confidence = final_answer_score("t", text, "186", ntl_info=info(ids, log_probs))  # default: confidence
    assert nll["ntl_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.8)) / 3, rel=1e-5)
    assert round(nll["ntl_loss"], 3) == 0.364
    assert confidence["ntl_loss"] == pytest.approx(-math.log(0.7), rel=1e-5)
    assert confidence["score"] == pytest.approx(0.7, rel=1e-5)
    assert (confidence["ntl_digits"], confidence["ntl_missing_digits"], confidence["exact_match"]) == (3, 0, 1)


@pytest.mark.parametrize("method", ["nll", "confidence", "was", "mse"])
def test_final_answer_wrong_answer_targets_ground_truth_digits(tokenizer, method):
    text = "So 9 + 8 = 17.\n#### 17"
    ids = encode(tokenizer, text)
    tens, units = digit_positions(ids)[-2:]
    # The model wrote 1 then 7; the targets are the ground truth's 1 and 8.
    log_probs = planted(ids, {tens: (1, 0.9), units: (8, 0.3)})
    result = final_answer_score("t", text, "18", ntl_info=info(ids, log_probs), method=method, tau=2.0)
    expected = {
        "nll": -(math.log(0.9) + math.log(0.3)) / 2,
        "confidence": -math.log((0.9 + 0.3) / 2),
        "was": (was_of_planted(1, 0.9) + was_of_planted(8, 0.3)) / 2,
        "mse": (mse_of_planted(1, 0.9) + mse_of_planted(8, 0.3)) / 2,
    }[method]
    assert result["ntl_loss"] == pytest.approx(expected, rel=1e-5)
    assert result["score"] == pytest.approx(math.exp(-expected / 2.0), rel=1e-5)
    assert result["exact_match"] == 0


def test_hedged_answers_final_mode_scores_only_the_final_answer(tokenizer):
    """"So #### 5\n####8" against 5: the policy's sure 5 in the first answer gives no credit; L is the NTL of
    the final answer's digit (it wrote 8) against the ground truth 5, in both modes exact match is 0."""
    text = "So #### 5\n####8"
    ids = encode(tokenizer, text)
    first, last = digit_positions(ids)
    log_probs = planted(ids, {first: (5, 0.99), last: (5, 0.2)})
    final = final_answer_score("t", text, "5", ntl_info=info(ids, log_probs), method="nll")
    every = all_tokens_score("t", text, "5", ntl_info=info(ids, log_probs))
    assert final["ntl_loss"] == pytest.approx(-math.log(0.2), rel=1e-5)
    assert (final["ntl_digits"], final["pred"], final["exact_match"]) == (1, "8", 0)
    assert (every["score"], every["exact_match"]) == (0.0, 0)


MISSING_NLL = -math.log(1e-8)


@pytest.mark.parametrize(
    "answer, truth, plan, missing, expected_nll, expected_confidence, expected_was",
    [
        # Extra leading digit: its target is 0.
        ("1186", "186", [(0, 0.2), (1, 0.7), (8, 0.6), (6, 0.8)], 0,
         -(math.log(0.2) + math.log(0.7) + math.log(0.6) + math.log(0.8)) / 4, -math.log(2.3 / 4),
         (was_of_planted(0, 0.2) + was_of_planted(1, 0.7) + was_of_planted(8, 0.6) + was_of_planted(6, 0.8)) / 4),
        # Short answer: units under units, the hundreds digit 1 was never emitted.
        ("86", "186", [(8, 0.6), (6, 0.8)], 1,
         (-math.log(0.6) - math.log(0.8) + MISSING_NLL) / 3, -math.log((0.6 + 0.8 + 1e-8) / 3),
         (was_of_planted(8, 0.6) + was_of_planted(6, 0.8) + 9) / 3),
        # Extra trailing decimal: target 0.
        ("2.50", "2.5", [(2, 0.9), (5, 0.5), (0, 0.4)], 0,
         -(math.log(0.9) + math.log(0.5) + math.log(0.4)) / 3, -math.log(1.8 / 3),
         (was_of_planted(2, 0.9) + was_of_planted(5, 0.5) + was_of_planted(0, 0.4)) / 3),
        # Decimals aligned at the point: 12.5 vs 12.25 -> tenths target 2, hundredths 5 missing.
        ("12.5", "12.25", [(1, 0.9), (2, 0.9), (2, 0.1)], 1,
         (-2 * math.log(0.9) - math.log(0.1) + MISSING_NLL) / 4, -math.log((1.9 + 1e-8) / 4),
         (was_of_planted(1, 0.9) + was_of_planted(2, 0.9) + was_of_planted(2, 0.1) + 9) / 4),
        # Ground truth "18.0" is 18; a leading zero of the answer targets 0; commas are not digits.
        ("018", "18.0", [(0, 0.5), (1, 0.5), (8, 0.5)], 0, -math.log(0.5), -math.log(0.5),
         sum(was_of_planted(d, 0.5) for d in (0, 1, 8)) / 3),
        ("1,234", "1234", [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.5)], 0, -math.log(0.5), -math.log(0.5),
         sum(was_of_planted(d, 0.5) for d in (1, 2, 3, 4)) / 4),
    ],
)
def test_final_answer_alignment_rule(tokenizer, answer, truth, plan, missing, expected_nll, expected_confidence,
                                     expected_was):
    text = f"Work: 7 + 5 = 12.\n#### {answer}"
    ids = encode(tokenizer, text)
    answer_positions = digit_positions(ids)[-len(plan):]
    log_probs = planted(ids, dict(zip(answer_positions, plan)))
    for method, expected in (("nll", expected_nll), ("confidence", expected_confidence), ("was", expected_was)):
        result = final_answer_score("t", text, truth, ntl_info=info(ids, log_probs), method=method)
        assert result["ntl_loss"] == pytest.approx(expected, rel=1e-5), method
        assert (result["ntl_digits"], result["ntl_missing_digits"]) == (len(plan), missing)


@pytest.mark.parametrize("method, expected", [("nll", MISSING_NLL), ("confidence", MISSING_NLL), ("was", 9.0),
                                              ("mse", 81.0)])
def test_final_answer_without_an_answer_counts_every_ground_truth_digit_missing(tokenizer, method, expected):
    text = "I think it is 18 but I am not sure."
    ids = encode(tokenizer, text)
    result = final_answer_score("t", text, "186", ntl_info=info(ids, planted(ids, {})), method=method)
    assert result["ntl_loss"] == pytest.approx(expected, rel=1e-5)
    assert (result["pred"], result["ntl_digits"], result["ntl_missing_digits"]) == ("", 0, 3)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("So ####186", "186"),
        ("Steps.\n#### 18", "18"),
        ("Step: #### 18", "18"),  # " ####" is one token here
        ("It costs #### $1,234.", "1234"),
        ("**#### 18**", "18"),
        ("#####18", "18"),  # "#####" is one token
        ("First #### 5, then 2 more: #### 7\n", "7"),
        ("\n\n####  -7.5 degrees", "-7.5"),
    ],
)
def test_final_answer_tokens_located_in_every_marker_context(tokenizer, text, answer):
    """Plant 0.9 on the true answer tokens (found from the tokenizer's offsets) and BAD everywhere else."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    number = re.search(r"####[^0-9-]*(-?[0-9][0-9,.]*)[^#]*$", text)
    start, end = number.span(1)
    expected = [t for t, (a, b) in enumerate(offsets) if ids[t] in DIGIT_IDS and start <= a and b <= end]
    truth = answer.lstrip("-")
    plan = {t: (DIGIT_IDS.index(ids[t]), 0.9) for t in expected}
    result = final_answer_score("t", text, truth, ntl_info=info(ids, planted(ids, plan)), method="nll")
    assert result["pred"] == answer
    assert result["ntl_loss"] == pytest.approx(-math.log(0.9), rel=1e-5)
    assert result["ntl_digits"] == len(expected) == sum(c.isdigit() for c in answer)


def test_all_tokens_every_response_digit_with_its_own_target(tokenizer):
    text = "3 * 6 = 18.\n#### 18"
    ids = encode(tokenizer, text)
    probabilities = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    plan = {t: (DIGIT_IDS.index(ids[t]), p) for t, p in zip(digit_positions(ids), probabilities)}
    log_probs = planted(ids, plan)
    result = all_tokens_score("t", text, "18", ntl_info=info(ids, log_probs))
    expected = -sum(math.log(p) for p in probabilities) / 6
    assert result["ntl_loss"] == pytest.approx(expected, rel=1e-5)
    assert result["score"] == pytest.approx(math.exp(-expected), rel=1e-5)
    assert result["ntl_digits"] == 6
    wrong = all_tokens_score("t", text, "19", ntl_info=info(ids, log_probs))
    assert (wrong["score"], wrong["exact_match"]) == (0.0, 0)
    assert wrong["ntl_loss"] == pytest.approx(expected, rel=1e-5)


def test_prompt_tokens_are_never_counted(tokenizer):
    """The prompt (with digits and a ####) sits before the response, masked out and planted with bad rows."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tom has 25 apples and eats 7. #### 99 How many are left?"}],
        tokenize=False, add_generation_prompt=True,
    )
    response = "25 - 7 = 18\n#### 18"
    prompt_ids, response_ids = encode(tokenizer, prompt), encode(tokenizer, response)
    plan = {t: (DIGIT_IDS.index(response_ids[t]), 0.8) for t in digit_positions(response_ids)}
    response_rows = planted(response_ids, plan)
    full_ids = prompt_ids + response_ids
    full_rows = torch.cat([planted(prompt_ids, {}), response_rows])
    mask = [0] * len(prompt_ids) + [1] * len(response_ids)
    for score in (final_answer_score, all_tokens_score):
        alone = score("t", response, "18", ntl_info=info(response_ids, response_rows), method="nll")
        masked = score("t", response, "18", ntl_info=info(full_ids, full_rows, response_mask=mask), method="nll")
        assert alone["ntl_loss"] == pytest.approx(-math.log(0.8), rel=1e-5)
        assert masked["ntl_loss"] == pytest.approx(alone["ntl_loss"], rel=1e-6)
        assert masked["ntl_digits"] == alone["ntl_digits"]


def test_batched_equals_one_by_one_on_padded_tensors(tokenizer):
    texts = ["#### 18", "1 + 1 = 2\n#### 2", "no digits here", "5 * 5 = 25\n#### 24"]
    truths = ["18", "2", "3", "25"]
    width = 16
    ids, rows, masks = [], [], []
    generator = torch.Generator().manual_seed(0)
    for text in texts:
        sample = encode(tokenizer, text)
        pad = width - len(sample)
        ids.append(sample + [151643] * pad)
        rows.append(torch.log_softmax(torch.randn(width, 10, generator=generator), -1))
        masks.append([1] * len(sample) + [0] * pad)
    batch = {"digit_log_probs": torch.stack(rows), "response_ids": ids, "digit_ids": DIGIT_IDS,
             "response_mask": masks}
    for mode, score in (("final_answer", final_answer_score), ("all_tokens", all_tokens_score)):
        together = compute_scores(mode, texts, truths, batch)
        for b, text in enumerate(texts):
            n = sum(masks[b])
            alone = score("t", text, truths[b], ntl_info=info(ids[b][:n], rows[b][:n]))
            assert together[b].keys() == alone.keys()
            for key, value in alone.items():
                expected = pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
                assert together[b][key] == expected, (mode, b, key)


def test_digit_count_mismatch_is_reported_not_guessed(tokenizer):
    ids = encode(tokenizer, "#### 19 1")
    result = final_answer_score("t", "#### 18", "18", ntl_info=info(ids, planted(ids, {})))
    assert (result["score"], result["ntl_status"], result["ntl_available"], result["exact_match"]) == (
        0.0, "digit_count_mismatch", 0, 1)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_log_probs_score_zero_in_both_modes(tokenizer):
    ids = encode(tokenizer, "#### 18")
    log_probs = torch.full((len(ids), 10), math.nan)
    final = final_answer_score("t", "#### 18", "18", ntl_info=info(ids, log_probs))
    every = all_tokens_score("t", "#### 18", "18", ntl_info=info(ids, log_probs))
    assert (final["score"], final["ntl_status"], final["ntl_non_finite"]) == (0.0, "non_finite", 1)
    assert (every["score"], every["ntl_status"], every["ntl_non_finite"]) == (0.0, "non_finite", 1)


def test_ground_truth_that_is_not_a_number(tokenizer):
    ids = encode(tokenizer, "#### 18")
    result = final_answer_score("t", "#### 18", "eighteen", ntl_info=info(ids, planted(ids, {})))
    assert (result["score"], result["ntl_status"]) == (0.0, "ground_truth_not_a_number")


@pytest.mark.parametrize(
    "ntl_info, message",
    [
        ([0.5], "must be a dict"),
        ({"ntl_loss": "0.5"}, "real number"),
        ({"ntl_loss": [0.5]}, "real number"),
        ({"ntl_loss": 0.5, "digit_log_probs": torch.zeros(3, 10)}, "both"),
        ({"digit_log_probs": torch.zeros(3, 10), "digit_ids": DIGIT_IDS}, "lacks 'response_ids'"),
        ({"digit_log_probs": torch.zeros(3, 10), "response_ids": [15, 16, 17]}, "lacks 'digit_ids'"),
        (info([15, 16, 17], torch.zeros(3, 9)), r"shape \[L, 10\]"),
        (info([15, 16, 17], torch.zeros(2, 3, 10)), r"shape \[L, 10\]"),
        (info([15, 16], torch.zeros(3, 10)), "without the digit dimension"),
        (info([15.0, 16.0, 17.0], torch.zeros(3, 10)), "integer"),
        (info([15, 16, 17], torch.zeros(3, 10, dtype=torch.long)), "floating point"),
        (info([15, 16, 17], torch.zeros(3, 10), response_mask=[1, 1]), "without the digit dimension"),
        ({**info([15, 16, 17], torch.zeros(3, 10)), "digit_ids": list(range(9))}, "10 integer token ids"),
        ({**info([15, 16, 17], torch.zeros(3, 10)), "digit_ids": [15] * 10}, "distinct"),
        (info([[15], [16, 17]], torch.zeros(3, 10)), "rectangular"),
    ],
)
def test_structurally_wrong_ntl_info_is_a_value_error(ntl_info, message):
    for score in (final_answer_score, all_tokens_score):
        with pytest.raises(ValueError, match=message):
            score("t", "#### 18", "18", ntl_info=ntl_info)
