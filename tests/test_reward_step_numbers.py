"""The reward step on number-token sets: the engine's number rows (per sample, the rows of the response's number
tokens only) score as the dense ``[B, R, K]`` rows do, on Qwen2.5's 10 digits and Llama-3's 1,110 number tokens;
place weights of the loss targets; answers that are no number are counted."""

from __future__ import annotations

import pytest
import torch

from ntl_kernels import llama3_tokenizer, number_tokens, qwen2_5_tokenizer
from ntl_reward.final_answer import compute_score as final_answer_score
from verl_integration.reward_step import ntl_reward_step

TOKENIZERS = {"qwen2.5": qwen2_5_tokenizer, "llama3": llama3_tokenizer}
TEXTS = ["So 1234 + 5 = 1239.\n#### 1239", "I think 1,240.\n#### 1240", "no answer here", "#### 99"]
GROUND_TRUTH = "1239"


def padded_batch(tokenizer, texts):
    encoded = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    width = max(map(len, encoded))
    responses = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in encoded])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded])
    return responses, mask


def step(tokenizer, texts, digit_log_probs, responses, mask, numbers, **options):
    return ntl_reward_step(
        responses=responses, response_mask=mask, digit_log_probs=digit_log_probs, solution_strs=texts,
        ground_truths=[GROUND_TRUTH] * len(texts), data_sources=["openai/gsm8k"] * len(texts),
        extra_infos=[{} for _ in texts], compute_score=final_answer_score, digit_ids=numbers.ids, tau=1.0,
        number_texts=numbers.texts, **options,
    )


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("loss_targets", ["final_answer", "correct_generated"])
def test_number_rows_score_as_the_dense_rows_and_weights_follow_the_places(name, loss_targets):
    tokenizer = TOKENIZERS[name]()
    numbers = number_tokens(tokenizer)
    responses, mask = padded_batch(tokenizer, TEXTS)
    generator = torch.Generator().manual_seed(0)
    dense = torch.log_softmax(torch.randn(*responses.shape, len(numbers), generator=generator), -1)
    is_number = torch.isin(responses, numbers.ids) & mask.bool()
    number_rows = [rows[numbers_of_row] for rows, numbers_of_row in zip(dense, is_number)]
    from_dense = step(tokenizer, TEXTS, dense, responses, mask, numbers, loss_targets=loss_targets)
    from_rows = step(tokenizer, TEXTS, number_rows, responses, mask, numbers, loss_targets=loss_targets,
                     loss_place_weighting="place")
    assert torch.equal(from_rows.rm_scores, from_dense.rm_scores) and from_dense.ntl_weights is None
    assert torch.equal(from_rows.ntl_targets, from_dense.ntl_targets)
    assert from_dense.results[0]["exact_match"] == 1 and from_dense.results[0]["ntl_status"] == "ok"
    assert 0 < float(from_dense.rm_scores[0].sum()) < 1
    has_target = from_rows.ntl_targets != -100
    assert has_target[0].any()  # the correct answer's tokens: its own tokens under both target rules
    # place weights: 1 + the place of each target token's leading digit ('1239' on Qwen: 4, 3, 2, 1; Llama-3 cuts
    # it '123' '9': 4, 1); 1 on every row without a target
    weights = from_rows.ntl_weights
    assert torch.all(weights[~has_target] == 1)
    expected = {"qwen2.5": [4.0, 3.0, 2.0, 1.0], "llama3": [4.0, 1.0]}[name]
    assert weights[0][has_target[0]].tolist()[-len(expected):] == expected


def test_number_rows_of_the_wrong_count_are_refused_naming_the_argument():
    tokenizer = qwen2_5_tokenizer()
    numbers = number_tokens(tokenizer)
    responses, mask = padded_batch(tokenizer, TEXTS)
    rows = [torch.zeros(1, len(numbers)) for _ in TEXTS]
    with pytest.raises(ValueError, match="digit_log_probs must be"):
        step(tokenizer, TEXTS, rows, responses, mask, numbers)


def test_answers_that_are_no_number_get_verls_verdict_and_are_counted():
    tokenizer = qwen2_5_tokenizer()
    numbers = number_tokens(tokenizer)
    texts = ["So it is $\\boxed{\\frac{1}{2}}$.", "So it is $\\boxed{0.5}$."]
    responses, mask = padded_batch(tokenizer, texts)
    dense = torch.log_softmax(torch.zeros(*responses.shape, len(numbers)), -1)
    result = ntl_reward_step(
        responses=responses, response_mask=mask, digit_log_probs=dense, solution_strs=texts,
        ground_truths=["\\frac{1}{2}"] * 2, data_sources=["HuggingFaceH4/MATH-500"] * 2, extra_infos=[{}, {}],
        compute_score=final_answer_score, digit_ids=numbers.ids, tau=1.0,
    )
    assert [r["ntl_status"] for r in result.results] == ["answer_not_a_number", "ground_truth_not_a_number"]
    assert [r["exact_match"] for r in result.results] == [1, 1]  # 0.5 equals 1/2 by value
    assert result.metrics["reward/ntl_non_numeric"] == 0.5
