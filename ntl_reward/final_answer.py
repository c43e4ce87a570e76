"""Final-answer NTL reward for verl: ``score = exp(-L / tau)``, L over the final answer's digits vs the ground truth.

verl config::

    reward.custom_reward_function.path=<repo>/ntl_reward/final_answer.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.tau=1.0

verl loads this file by path (not as a package module), so it imports ``ntl_reward`` absolutely.
"""

from ntl_reward.scoring import compute_score as _compute_score
from ntl_reward.scoring import compute_scores as _compute_scores

MODE = "final_answer"


def compute_score(
    data_source=None, solution_str="", ground_truth=None, extra_info=None, *,
    ntl_info=None, tau=1.0, method="confidence", extraction="strict", answer_credit="none", place_weighting="none",
    **unused,
) -> dict:
    """Reward of one response: ``exp(-L / tau)``, 0 when no NTL is available; exact match is reported, not required.

    L is NTL (``method``: "confidence" by default, or "nll", "was", "mse") over the digit tokens of the final
    answer — the number after the last ``####`` (``extraction="flexible"``: the last number), in the last
    ``\\boxed{}`` or on the last ``Answer:`` line, by ``data_source`` as verl routes it (``ntl_reward.formats``)
    — with the ground-truth digits as targets, aligned by place value (units under units, decimals at the decimal
    point). Answer digits at places the ground truth lacks (extra leading digits, extra decimals) have target 0.
    Ground-truth digits with no emitted digit at their place (short or missing answer) count as positions
    whose target probability is 1e-8 for nll/confidence, and at the maximal distance, 9 (81 for mse), for
    was/mse. The sign is not a digit. See ``ntl_reward.scoring`` for how the answer tokens are located.
    Broken NTL input (NaN/inf loss or digit log-probs, digit tokens that are not the text's digits) scores 0,
    with any ``answer_credit`` (``ntl_status`` says which). An answer that is no number (``\\frac{1}{2}``), or a
    ground truth that is none, has no digits to score: the score is the exact match, verl's verdict
    (``ntl_status`` ``"answer_not_a_number"`` / ``"ground_truth_not_a_number"``).

    Args:
        data_source, extra_info: as verl passes them; ``data_source`` picks the answer format (``openai/gsm8k`` and
            unknown sources: ``####``; verl's MATH sources: the last box; ``math_dapo``, ``math``, ``aime*``: the
            last ``Answer:`` line, else the last box); ``extra_info["ntl_info"]`` is used when ``ntl_info`` is None
            (verl's reward managers pass only these four arguments).
        solution_str: the decoded response (prompt excluded).
        ground_truth: the dataset answer, e.g. "18".
        ntl_info: None, ``{"ntl_loss": float}`` or ``{"digit_log_probs": [L, 10], "response_ids": [L],
            "digit_ids": [10], "response_mask": [L] (optional)}`` (``ntl_reward.ntl_info``).
        tau: positive finite temperature (verl: ``reward_kwargs.tau``).
        answer_credit: "none" (the formula above); "exact_match": ``(exp(-L/tau) + EM) / 2``; "distance":
            ``(exp(-L/tau) + exp(-D/tau)) / 2``, D the place-value distance of the sampled answer to the ground
            truth. L scores the policy's digit probabilities, not the digits it sampled, so on a weak policy it
            pays about the same for any answer; these variants also pay for the answer itself
            (``ntl_reward.scoring``).
        place_weighting: "none" (default) or "place": L's positions weighted by the place of each number token's
            most significant digit (``ntl_reward.place_value``).
        **unused: what verl's reward managers add (``reward_router_address``, ``reward_model_tokenizer``),
            ignored. Misspelt user options land here too: check ``reward_kwargs`` with
            ``ntl_reward.check_reward_kwargs`` at start-up.
    Returns:
        ``{"score": float in [0, 1], "exact_match": 0/1, "ntl_loss": float (0.0 when ntl_available is 0),
        "pred": str ("" without an answer), "ntl_available": 0/1, "ntl_status": str, "ntl_non_finite": 0/1,
        "ntl_digits": int, "ntl_missing_digits": int, "tau": float}``.
    Raises:
        ValueError: tau not positive finite, unknown method/extraction, structurally wrong ``ntl_info``.
    """
    return _compute_score(
        MODE, solution_str, ground_truth, ntl_info, data_source=data_source, extra_info=extra_info, tau=tau,
        method=method, extraction=extraction, answer_credit=answer_credit, place_weighting=place_weighting,
    )


def compute_scores(solution_strs, ground_truths, ntl_info=None, *, data_sources=None, tau=1.0, method="confidence",
                   extraction="strict", answer_credit="none", place_weighting="none"):
    """The batched form for a trainer: B responses -> B dicts; ``ntl_info`` batched, ``data_sources`` B names or
    one (see ``ntl_reward.scoring``)."""
    return _compute_scores(MODE, solution_strs, ground_truths, ntl_info, data_sources=data_sources, tau=tau,
                           method=method, extraction=extraction, answer_credit=answer_credit,
                           place_weighting=place_weighting)
