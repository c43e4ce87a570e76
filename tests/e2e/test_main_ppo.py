"""verl 0.9.1's real ``python -m verl.trainer.main_ppo`` with the NTL plug-in, end to end on the CPU.

Each case runs the launcher as a user would (Ray, the v1 ``ntl`` trainer, hybrid actor workers with the NTL engine,
the agent loop, reward workers, validation, a checkpoint) with the GSM8K scripts' overrides (``tests/e2e/run.py``)
and checks from the run's metrics that NTL reached training in every step (``tests/e2e/metrics.py``). Runs go one
after another (each takes a few GB); ``tests/e2e/conftest.py`` prints their wall times and peak memory.
"""

import math

import pytest

from tests.e2e.metrics import check_ntl_reached_training, read_steps
from tests.e2e.run import CASES, NTL_LOSS_COEF, TOTAL_STEPS, RunResult, prepare_inputs, run_case

RUNS: dict[tuple[str, tuple[str, ...]], RunResult] = {}  # (case, extra overrides) -> result, read by conftest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(case, extra_overrides)``: the case's result, each case run once per session (on shared inputs)."""
    inputs = prepare_inputs(tmp_path_factory.mktemp("inputs"))

    def run_once(case: str, extra: tuple[str, ...] = ()) -> RunResult:
        if (case, extra) not in RUNS:
            RUNS[case, extra] = run_case(CASES[case], tmp_path_factory.mktemp(case), list(extra), inputs)
        return RUNS[case, extra]

    return run_once


def output_tail(result: RunResult, lines: int = 60) -> str:
    return "\n".join(result.output().splitlines()[-lines:])


# Final-answer NTL (with GRPO), the async v1 mode and trainer.use_v1=false run in the verl matrix
# (tests/verl_matrix.py, `make test` runs it after these), which runs each case once
@pytest.mark.parametrize("case", ["all_tokens", "grpo_ref_kl_dynamic_bsz", "grpo_2_ranks"])
def test_ntl_reaches_training_in_every_step(run, case):
    result = run(case)
    assert result.returncode == 0, output_tail(result)
    steps = read_steps(result.metrics)
    check_ntl_reached_training(steps, expected_steps=TOTAL_STEPS, loss_coef=NTL_LOSS_COEF)
    assert any(key.startswith("val-core/") for key in steps[TOTAL_STEPS]), "validation did not run"
    assert (result.workdir / "checkpoints" / f"global_step_{TOTAL_STEPS}" / "actor").is_dir(), "no checkpoint"
    if case.startswith("grpo"):
        assert steps[TOTAL_STEPS]["actor/kl_loss"] > 0, "the reference model's KL loss did not reach the actor"


def test_two_data_parallel_ranks_agree_with_one(run):
    one, two = (read_steps(run(case).metrics)[1] for case in ("grpo_ref_kl_dynamic_bsz", "grpo_2_ranks"))
    for key in ("reward/ntl_score", "actor/ntl_loss"):
        assert math.isclose(two[key], one[key], rel_tol=1e-5), (key, one[key], two[key])


@pytest.mark.parametrize(
    ("override", "named_key"),
    [
        ("trainer.v1.trainer_mode=sync", "trainer.v1.trainer_mode"),
        ("actor_rollout_ref.model.external_lib=null", "actor_rollout_ref.model.external_lib"),
    ],
)
def test_start_up_refuses_ntl_settings_that_would_not_reach_training(run, override, named_key):
    result = run("all_tokens", (override,))
    output = result.output()
    assert result.returncode != 0, output_tail(result)
    assert named_key in output and "asks for NTL" in output, output_tail(result)
    assert "ray init kwargs" not in output, "refused only after Ray started: the check must run before the trainer"
    assert not result.metrics.exists()
