"""ntl_reward: the design document's expected values, tau and its schedule, and loading through verl."""

import math
import re

import pytest

from ntl_reward import TauSchedule, compute_scores
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.final_answer import compute_score as final_answer_score

GOOD, POOR = 0.5, 2.0  # the document's "good" and "poor" NTL losses


@pytest.mark.parametrize(
    "response, ntl_info, final_expected, all_expected",
    [
        ("Step: #### 18", {"ntl_loss": GOOD}, 0.607, 0.607),  # correct + good NTL
        ("Step: #### 18", {"ntl_loss": POOR}, 0.135, 0.135),  # correct + poor NTL
        ("Step: #### 17", {"ntl_loss": GOOD}, 0.607, 0.000),  # wrong + good NTL
        ("Step: #### 17", {"ntl_loss": POOR}, 0.135, 0.000),  # wrong + poor NTL
        ("Step: #### 18", None, 0.000, 1.000),  # correct, no NTL
    ],
)
def test_expected_results_table(response, ntl_info, final_expected, all_expected):
    final = final_answer_score("test", response, "18", ntl_info=ntl_info, tau=1.0)
    every = all_tokens_score("test", response, "18", ntl_info=ntl_info, tau=1.0)
    assert round(final["score"], 3) == final_expected
    assert round(every["score"], 3) == all_expected
    assert final["exact_match"] == every["exact_match"] == int(response.endswith("18"))


def test_document_validation_example():
    result = final_answer_score("test", "Step: #### 18", "18", ntl_info={"ntl_loss": 0.5}, tau=1.0)
    assert result["score"] == pytest.approx(math.exp(-0.5), abs=1e-12)  # 0.6065...
    assert str(result["score"]).startswith("0.6065")
    assert (result["exact_match"], result["ntl_loss"], result["pred"], result["ntl_status"]) == (1, 0.5, "18", "ok")


@pytest.mark.parametrize(
    "response, correct",
    [
        ("So #### 5\n####8", False),  # hedging: the earlier right answer earns nothing
        ("So #### 5\n#### 8", False),
        ("####5, or maybe ####8", False),
        ("#### 8\n#### 5", True),  # the final answer is what counts
        ("#### 5\n#### 5", True),  # the same answer twice is one answer
        ("####5", True),
        ("So 2 + 3 = 5\n#### 5", True),
    ],
)
def test_one_answer_per_response(response, correct):
    for ntl_info in ({"ntl_loss": GOOD}, None):
        final = final_answer_score("openai/gsm8k", response, "5", ntl_info=ntl_info, tau=1.0)
        every = all_tokens_score("openai/gsm8k", response, "5", ntl_info=ntl_info, tau=1.0)
        assert final["exact_match"] == every["exact_match"] == int(correct)
        expected_all = (math.exp(-GOOD) if ntl_info else 1.0) if correct else 0.0
        assert every["score"] == pytest.approx(expected_all)
    assert final["pred"] == every["pred"] == response.rsplit("#", 1)[1].strip().split(",")[0]


def test_hedging_is_paid_by_verls_strict_rule_but_not_here():
    """verl's rule needs "#### " with a space, so it never sees the final "####8" and pays for the earlier 5."""
    from verl.utils.reward_score import gsm8k

    hedge = "So #### 5\n####8"
    assert gsm8k.compute_score(hedge, "5", method="strict") == 1.0
    assert all_tokens_score("openai/gsm8k", hedge, "5")["exact_match"] == 0


@pytest.mark.parametrize(
    "answer, truth, distance",
    [("18", "18", 0.0), ("19", "18", 0.5), ("118", "18", 1 / 3), ("8", "18", 4.5), ("18.5", "18", 5 / 3),
     ("018", "18.0", 0.0), ("-18", "18", 0.0), ("1.2.3", "18", None), (None, "18", None)],
)
def test_answer_distance_is_the_place_value_distance(answer, truth, distance):
    from ntl_reward.answer import decimal_digits
    from ntl_reward.scoring import answer_distance

    result = answer_distance(answer, decimal_digits(truth))
    assert result == (None if distance is None else pytest.approx(distance))


@pytest.mark.parametrize(
    "response, credit, expected",
    [
        ("#### 18", "exact_match", (math.exp(-GOOD) + 1.0) / 2),
        ("#### 19", "exact_match", math.exp(-GOOD) / 2),
        ("#### 19", "distance", (math.exp(-GOOD) + math.exp(-0.5)) / 2),
        ("#### 18", "distance", (math.exp(-GOOD) + 1.0) / 2),
        ("no answer", "distance", math.exp(-GOOD) / 2),
        ("So #### 18\n####19", "exact_match", math.exp(-GOOD) / 2),  # one answer per response: 19
        ("#### 19", "none", math.exp(-GOOD)),
    ],
)
def test_final_answer_credit_option(response, credit, expected):
    result = final_answer_score("t", response, "18", ntl_info={"ntl_loss": GOOD}, answer_credit=credit)
    assert result["score"] == pytest.approx(expected)
    assert final_answer_score("t", response, "18", ntl_info=None, answer_credit=credit)["score"] == pytest.approx(
        expected - (math.exp(-GOOD) / (1 if credit == "none" else 2))
    )


def test_answer_credit_is_a_final_answer_option_only():
    with pytest.raises(ValueError, match="answer_credit must be one of"):
        final_answer_score("t", "#### 18", "18", answer_credit="partial")
    with pytest.raises(ValueError, match="option of the final_answer mode"):
        compute_scores("all_tokens", ["#### 18"], ["18"], answer_credit="exact_match")


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 5.0])
def test_tau_divides_the_loss(tau):
    for score in (final_answer_score, all_tokens_score):
        assert score("t", "#### 18", "18", ntl_info={"ntl_loss": 1.0}, tau=tau)["score"] == pytest.approx(
            math.exp(-1.0 / tau)
        )


@pytest.mark.parametrize("tau", [0, -1.0, math.nan, math.inf, -math.inf, "1.0", None, True, [1.0]])
def test_bad_tau_is_a_value_error_naming_the_value(tau):
    for score in (final_answer_score, all_tokens_score):
        with pytest.raises(ValueError, match=re.escape(f"tau must be a positive finite number, got {tau!r}")):
            score("t", "#### 18", "18", ntl_info={"ntl_loss": 1.0}, tau=tau)


@pytest.mark.parametrize("loss, status, all_tokens", [(math.nan, "invalid_loss", 0.0), (math.inf, "invalid_loss", 0.0),
                                                      (-0.5, "invalid_loss", 0.0), (None, "missing", 1.0)])
def test_unusable_precomputed_loss_means_ntl_unavailable(loss, status, all_tokens):
    """A broken loss scores 0 in both modes; only a missing one leaves All mode its exact match."""
    final = final_answer_score("t", "#### 18", "18", ntl_info={"ntl_loss": loss})
    every = all_tokens_score("t", "#### 18", "18", ntl_info={"ntl_loss": loss})
    assert (final["score"], every["score"]) == (0.0, all_tokens)
    assert final["ntl_loss"] == 0.0 and final["ntl_available"] == 0 and final["ntl_status"] == status


@pytest.mark.parametrize("ntl_info", [None, {}, {"unrelated": 1}])
def test_no_ntl_field_means_unavailable(ntl_info):
    result = final_answer_score("t", "#### 18", "18", ntl_info=ntl_info)
    assert (result["score"], result["ntl_status"], result["ntl_available"]) == (0.0, "missing", 0)


def test_ntl_info_from_extra_info_and_verl_kwargs_are_accepted():
    extra_info = {"ntl_info": {"ntl_loss": GOOD}, "index": 3, "num_turns": None}
    result = final_answer_score(
        data_source="openai/gsm8k", solution_str="#### 18", ground_truth="18", extra_info=extra_info,
        reward_router_address=None, reward_model_tokenizer=None,
    )
    assert result["score"] == pytest.approx(math.exp(-GOOD))


def test_default_methods_and_unknown_method():
    assert final_answer_score.__kwdefaults__["method"] == "confidence"
    assert all_tokens_score.__kwdefaults__["method"] == "nll"
    with pytest.raises(ValueError, match="method"):
        final_answer_score("t", "#### 18", "18", method="l1")
    with pytest.raises(ValueError, match="extraction"):
        final_answer_score("t", "#### 18", "18", extraction="loose")


def test_results_have_the_same_keys_for_every_sample():
    results = compute_scores(
        "all_tokens", ["#### 18", "no answer", ""], ["18", "18", "x"], {"ntl_loss": [0.1, math.nan, None]}
    )
    assert len({tuple(r) for r in results}) == 1
    assert [r["ntl_status"] for r in results] == ["ok", "invalid_loss", "missing"]
    assert [r["score"] for r in results] == [pytest.approx(math.exp(-0.1)), 0.0, 0.0]
    with pytest.raises(ValueError, match="one loss per sample"):
        compute_scores("all_tokens", ["#### 18"], ["18"], {"ntl_loss": [0.1, 0.2]})


def test_tau_schedules():
    assert [TauSchedule.constant(0.7).tau_at(s) for s in (0, 10**6)] == [0.7, 0.7]
    linear = TauSchedule.linear(2.0, 0.5, total_steps=100)
    assert [linear.tau_at(s) for s in (0, 50, 100, 500)] == [2.0, 1.25, 0.5, 0.5]
    stepped = TauSchedule.step({10: 1.0, 0: 2.0, 20: 0.5})
    assert [stepped.tau_at(s) for s in (0, 9, 10, 19, 20, 10**6)] == [2.0, 2.0, 1.0, 1.0, 0.5, 0.5]
    from_config = TauSchedule.from_config({"kind": "step", "milestones": {"0": 2.0, "5": 1.0}})
    assert from_config == TauSchedule.step({0: 2.0, 5: 1.0})
    assert TauSchedule.from_config({"kind": "linear", "start": 1.0, "end": 3.0, "total_steps": 4}).tau_at(1) == 1.5
    assert TauSchedule.from_config(0.25).tau_at(7) == 0.25


@pytest.mark.parametrize(
    "build",
    [
        lambda: TauSchedule.constant(0.0),
        lambda: TauSchedule.linear(1.0, math.nan, 10),
        lambda: TauSchedule.linear(1.0, 0.5, 0),
        lambda: TauSchedule.step({}),
        lambda: TauSchedule.step({-1: 1.0}),
        lambda: TauSchedule.from_config({"kind": "cosine"}),
        lambda: TauSchedule.from_config({"kind": "linear", "start": 1.0}),
        lambda: TauSchedule.constant(1.0).tau_at(-1),
        lambda: TauSchedule.constant(1.0).tau_at(1.5),
    ],
)
def test_bad_schedules_are_value_errors(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("module, expected", [("final_answer", math.exp(-GOOD / 2.0)), ("all_tokens", 0.0)])
def test_loaded_through_verls_get_custom_reward_fn(module, expected):
    """verl loads the file by path (not as a package module) and merges reward_kwargs into every call."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    import ntl_reward

    path = f"{ntl_reward.__path__[0]}/{module}.py"
    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": path, "name": "compute_score", "reward_kwargs": {"tau": 2.0}}}}
    )
    reward_fn = get_custom_reward_fn(config)
    # As verl's naive reward manager calls it: four keyword arguments, ntl_info inside extra_info.
    result = reward_fn(
        data_source="openai/gsm8k", solution_str="Natalia sold 48/2 = 24 clips.\n#### 17",
        ground_truth="18", extra_info={"ntl_info": {"ntl_loss": GOOD}, "split": "train", "index": 0},
    )
    assert result["score"] == pytest.approx(expected)
    assert result["tau"] == 2.0 and result["exact_match"] == 0
