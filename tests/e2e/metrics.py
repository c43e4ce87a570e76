"""Did NTL reach training? Checked from a run's metrics (verl's file logger: one JSON line per step).

For every training step of an NTL run:

- the advantage used the NTL reward: ``critic/score/mean`` (verl's mean sequence score, what the advantage reads)
  equals ``reward/ntl_score`` (the NTL trainer's mean recomputed score);
- some responses had digits to score: ``reward/ntl_coverage > 0``;
- the actor loss contains the NTL term: ``actor/loss`` equals verl's terms plus ``loss_coef * actor/ntl_loss``,
  ``actor/pg_loss + kl_loss_coef * actor/kl_loss - entropy_coeff * actor/entropy_loss + loss_coef * actor/ntl_loss``
  (the terms verl logged), with ``actor/ntl_loss != 0`` so that the term is visible;
- all of these are finite.

A run without NTL (verl's legacy trainer, the plug-in missing, another trainer mode) has no ``reward/ntl_*`` or
``actor/ntl_loss`` and fails every step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

REQUIRED = ("critic/score/mean", "reward/ntl_score", "reward/ntl_coverage", "actor/loss", "actor/pg_loss",
            "actor/ntl_loss")
OPTIONAL_LOSS_TERMS = ("actor/kl_loss", "actor/kl_coef", "actor/entropy_loss")
RELATIVE_TOLERANCE, ABSOLUTE_TOLERANCE = 1e-4, 1e-6


def read_steps(path: Path) -> dict[int, dict]:
    """``{step: metrics}`` from verl's file logger output (``{"step": s, "data": {...}}`` per line)."""
    steps: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE)


def step_problems(metrics: dict, *, loss_coef: float, entropy_coeff: float = 0.0) -> list[str]:
    """What shows that NTL did not reach training in one step's metrics (empty: it did)."""
    missing = [key for key in REQUIRED if key not in metrics]
    if missing:
        return [f"missing {', '.join(missing)}"]
    values = {key: metrics[key] for key in REQUIRED + OPTIONAL_LOSS_TERMS if key in metrics}
    not_finite = [f"{key}={value}" for key, value in values.items() if not math.isfinite(value)]
    if not_finite:
        return [f"not finite: {', '.join(not_finite)}"]
    problems = []
    if not _close(values["critic/score/mean"], values["reward/ntl_score"]):
        problems.append(f"critic/score/mean={values['critic/score/mean']} != reward/ntl_score="
                        f"{values['reward/ntl_score']}: the advantage did not use the NTL reward")
    if not values["reward/ntl_coverage"] > 0:
        problems.append(f"reward/ntl_coverage={values['reward/ntl_coverage']}: no response had digits to score")
    if values["actor/ntl_loss"] == 0:
        problems.append("actor/ntl_loss=0: the NTL loss term is invisible in actor/loss")
    expected = (values["actor/pg_loss"] + values.get("actor/kl_coef", 0.0) * values.get("actor/kl_loss", 0.0)
                - entropy_coeff * values.get("actor/entropy_loss", 0.0) + loss_coef * values["actor/ntl_loss"])
    if not _close(values["actor/loss"], expected):
        problems.append(f"actor/loss={values['actor/loss']} != {expected} = verl's terms + {loss_coef} * "
                        f"actor/ntl_loss: the NTL term is not (only once) in the actor loss")
    return problems


def check_ntl_reached_training(steps: dict[int, dict], *, expected_steps: int, loss_coef: float,
                               entropy_coeff: float = 0.0) -> None:
    """Raise AssertionError listing, step by step, what shows that NTL did not reach training.

    Args:
        steps: ``read_steps(metrics_file)``.
        expected_steps: training steps the run must have logged (1..expected_steps).
        loss_coef: the run's ``ntl.loss_coef`` (> 0, else the loss check cannot tell NTL from no NTL).
        entropy_coeff: the run's ``actor_rollout_ref.actor.entropy_coeff``.
    """
    if not loss_coef > 0:
        raise ValueError(f"loss_coef must be > 0 for the loss check to mean anything, got {loss_coef}")
    problems = [f"step {step}: no metrics logged" for step in range(1, expected_steps + 1) if step not in steps]
    for step in sorted(steps):
        problems += [f"step {step}: {problem}" for problem in
                     step_problems(steps[step], loss_coef=loss_coef, entropy_coeff=entropy_coeff)]
    if problems:
        raise AssertionError("NTL did not reach training:\n  " + "\n  ".join(problems))
