"""The checker of tests/e2e/metrics.py on recorded runs (tests/e2e/recorded/): it passes an NTL run and catches
verl's legacy trainer run with the NTL settings (recorded before start-up refused it: plain PPO, exit 0)."""

import re
from pathlib import Path

import pytest

from tests.e2e.metrics import check_ntl_reached_training, read_steps

RECORDED = Path(__file__).parent / "recorded"
NTL_RUN = RECORDED / "ntl_trainer_all_tokens.jsonl"  # the all_tokens case, ntl.loss_coef=0.5
LEGACY_RUN = RECORDED / "legacy_trainer_all_tokens.jsonl"  # the same with trainer.use_v1=false


def test_an_ntl_run_passes():
    check_ntl_reached_training(read_steps(NTL_RUN), expected_steps=2, loss_coef=0.5)


def test_the_legacy_trainer_run_fails_every_step():
    with pytest.raises(AssertionError) as failure:
        check_ntl_reached_training(read_steps(LEGACY_RUN), expected_steps=2, loss_coef=0.5)
    message = str(failure.value)
    assert "step 1: missing reward/ntl_score, reward/ntl_coverage, actor/ntl_loss" in message
    assert "step 2: missing" in message


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        ({"critic/score/mean": 0.5}, "the advantage did not use the NTL reward"),  # verl's own reward was used
        ({"actor/loss": 0.0}, "not (only once) in the actor loss"),  # the NTL term was not added
        ({"reward/ntl_coverage": 0.0}, "no response had digits"),
        ({"actor/ntl_loss": float("nan")}, "not finite"),
    ],
)
def test_each_symptom_is_caught(change, reported):
    steps = read_steps(NTL_RUN)
    steps[2].update(change)
    with pytest.raises(AssertionError, match=re.escape(reported)):
        check_ntl_reached_training(steps, expected_steps=2, loss_coef=0.5)


def test_a_missing_step_is_caught():
    steps = read_steps(NTL_RUN)
    del steps[2]
    with pytest.raises(AssertionError, match="step 2: no metrics logged"):
        check_ntl_reached_training(steps, expected_steps=2, loss_coef=0.5)
