"""All-tokens NTL reward for verl: ``score = EM * exp(-L / tau)``, L over every digit token the response generated.

verl config::

    reward.custom_reward_function.path=<repo>/ntl_reward/all_tokens.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.tau=1.0

verl loads this file by path (not as a package module), so it imports ``ntl_reward`` absolutely.
"""

from ntl_reward.scoring import compute_score as _compute_score
from ntl_reward.scoring import compute_scores as _compute_scores

MODE = "all_tokens"


def compute_score(
    data_source=None, solution_str="", ground_truth=None, extra_info=None, *,
    ntl_info=None, tau=1.0, method="nll", extraction="strict", place_weighting="none", **unused,
) -> dict:
    """Reward of one response: ``EM * exp(-L / tau)``; EM when no ``ntl_info`` is given; 0 when it is broken.

    EM is the exact match of the final answer with ``ground_truth``: by ``data_source``, as verl routes it
    (``ntl_reward.formats``), the number after the last ``####`` (``extraction="flexible"``: the last number), the
    last ``\\boxed{}`` or the last ``Answer:`` line. Only the final answer counts (``"#### 5\n####8"`` answers 8);
    a response with one answer that verl's scorer for the source pays has EM 1, and beyond that only answers equal
    to the ground truth by value do. L is NTL (``method``: "nll" by default, or "confidence", "was", "mse") over
    every digit token of the response, each with the digit it generated as target (the model's confidence in its
    own digits). Prompt tokens never count: ``ntl_info`` describes the response only (or masks the rest).
    Broken NTL input (NaN/inf loss or digit log-probs, digit tokens that are not the text's digits) scores 0
    (``ntl_status`` says which; ``ntl_reward.scoring``). An answer that is no number (``\\frac{1}{2}``) scores EM,
    verl's verdict, with no NTL (``ntl_status`` ``"answer_not_a_number"``).

    Args:
        data_source, extra_info: as verl passes them; ``data_source`` picks the answer format;
            ``extra_info["ntl_info"]`` is used when ``ntl_info`` is None
            (verl's reward managers pass only these four arguments).
        solution_str: the decoded response (prompt excluded).
        ground_truth: the dataset answer, e.g. "18".
        ntl_info: None, ``{"ntl_loss": float}`` or ``{"digit_log_probs": [L, 10], "response_ids": [L],
            "digit_ids": [10], "response_mask": [L] (optional)}`` (``ntl_reward.ntl_info``).
        tau: positive finite temperature (verl: ``reward_kwargs.tau``).
        place_weighting: "none" (default) or "place": L's positions weighted by the place of each number token's
            most significant digit (``ntl_reward.place_value``).
        **unused: what verl's reward managers add (``reward_router_address``, ``reward_model_tokenizer``),
            ignored. Misspelt user options land here too: check ``reward_kwargs`` with
            ``ntl_reward.check_reward_kwargs`` at start-up.
    Returns:
        ``{"score": float in [0, 1], "exact_match": 0/1, "ntl_loss": float (0.0 when ntl_available is 0),
        "pred": str ("" without an answer), "ntl_available": 0/1, "ntl_status": str, "ntl_non_finite": 0/1, "ntl_digits": int,
        "ntl_missing_digits": 0, "tau": float}``.
    Raises:
        ValueError: tau not positive finite, unknown method/extraction, structurally wrong ``ntl_info``.
    """
    return _compute_score(
        MODE, solution_str, ground_truth, ntl_info, data_source=data_source, extra_info=extra_info, tau=tau,
        method=method, extraction=extraction, place_weighting=place_weighting,
    )


def compute_scores(solution_strs, ground_truths, ntl_info=None, *, data_sources=None, tau=1.0, method="nll",
                   extraction="strict", place_weighting="none"):
    """The batched form for a trainer: B responses -> B dicts; ``ntl_info`` batched, ``data_sources`` B names or
    one (see ``ntl_reward.scoring``)."""
    return _compute_scores(MODE, solution_strs, ground_truths, ntl_info, data_sources=data_sources, tau=tau,
                           method=method, extraction=extraction, place_weighting=place_weighting)
