"""Temperature schedules for the reward: tau as a function of the training step.

A schedule is a list of knots ``(step, tau)`` with steps increasing from 0 or more:

- ``TauSchedule.constant(1.0)``: one knot, the same tau at every step;
- ``TauSchedule.linear(2.0, 0.5, total_steps=1000)``: tau goes linearly from 2.0 at step 0 to 0.5 at step 1000,
  and stays 0.5 after;
- ``TauSchedule.step({0: 2.0, 100: 1.0, 500: 0.5})``: tau of the last knot at or before the step.

Before the first knot tau is the first knot's value. Every tau is checked positive and finite at construction
(ValueError naming the field: ``start``, ``end``, ``milestones[100]``, ``taus[1]``), and a linear piece stays
between its two knots' taus even with extreme knots (1e308, subnormals, huge step counts), so ``tau_at`` always
returns a positive finite temperature.
"""

from __future__ import annotations

import bisect
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from .scoring import check_tau

INTERPOLATIONS = ("linear", "step")


def _check_step(step, name: str) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"{name} must be a non-negative integer training step, got {step!r}")
    return int(step)


@dataclass(frozen=True)
class TauSchedule:
    """Piecewise-linear (``"linear"``) or piecewise-constant (``"step"``) tau over training steps."""

    steps: tuple[int, ...]
    taus: tuple[float, ...]
    interpolation: str = "step"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not self.steps or len(self.steps) != len(self.taus):
            raise ValueError(f"steps and taus must be non-empty and equally long, got {self.steps} and {self.taus}")
        steps = tuple(_check_step(step, "a schedule step") for step in self.steps)
        if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
            raise ValueError(f"schedule steps must be strictly increasing, got {steps}")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "taus", tuple(check_tau(tau, f"taus[{i}]") for i, tau in enumerate(self.taus)))

    @classmethod
    def constant(cls, tau: float) -> TauSchedule:
        return cls((0,), (check_tau(tau),))

    @classmethod
    def linear(cls, start: float, end: float, total_steps: int) -> TauSchedule:
        if _check_step(total_steps, "total_steps") == 0:
            raise ValueError("total_steps must be positive for a linear schedule, got 0")
        return cls((0, total_steps), (check_tau(start, "start"), check_tau(end, "end")), "linear")

    @classmethod
    def step(cls, milestones: Mapping[int, float]) -> TauSchedule:
        ordered = sorted(milestones.items())
        taus = tuple(check_tau(tau, f"milestones[{step!r}]") for step, tau in ordered)
        return cls(tuple(step for step, _ in ordered), taus, "step")

    @classmethod
    def from_config(cls, config) -> TauSchedule:
        """From a number (constant) or a mapping: ``{"kind": "constant", "tau": 1.0}``,
        ``{"kind": "linear", "start": 2.0, "end": 0.5, "total_steps": 1000}`` or
        ``{"kind": "step", "milestones": {0: 2.0, 100: 1.0}}`` (an OmegaConf DictConfig works too)."""
        if isinstance(config, numbers.Real) and not isinstance(config, bool):
            return cls.constant(config)
        if not isinstance(config, Mapping) and not hasattr(config, "items"):
            raise ValueError(f"a tau schedule config must be a number or a mapping, got {config!r}")
        fields = dict(config.items())
        kind = fields.pop("kind", None)
        builders = {"constant": cls.constant, "linear": cls.linear, "step": cls.step}
        if kind not in builders:
            raise ValueError(f"tau schedule kind must be one of {tuple(builders)}, got {kind!r}")
        if kind == "step":
            fields["milestones"] = {int(step): tau for step, tau in dict(fields.get("milestones", {})).items()}
        try:
            return builders[kind](**fields)
        except TypeError as error:
            raise ValueError(f"bad fields for a {kind!r} tau schedule: {error}") from error

    def tau_at(self, step: int) -> float:
        """tau at training step ``step`` (a non-negative integer)."""
        step = _check_step(step, "step")
        after = bisect.bisect_right(self.steps, step)  # knots at or before `step`: self.steps[:after]
        if after == 0:
            return self.taus[0]
        if after == len(self.steps) or self.interpolation == "step":
            return self.taus[after - 1]
        (s0, s1), (t0, t1) = self.steps[after - 1 : after + 1], self.taus[after - 1 : after + 1]
        # A weighted mean of the two knots, with the weight from exact integer division (steps may be huge): the
        # form t0 + (t1 - t0) * w overflows to -inf for t0 = 1.7e308, t1 = 1. Rounding can still step just outside
        # [t0, t1] (to inf, or to 0 between subnormals); the exact value lies inside, so clamp.
        weight = (step - s0) / (s1 - s0)
        return min(max(t0 * (1 - weight) + t1 * weight, min(t0, t1)), max(t0, t1))
