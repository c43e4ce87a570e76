"""The ``ntl`` section of a verl config: every option, its default, and the start-up checks.

Options (hydra: ``+ntl.<name>=<value>``; the whole section is optional, defaults below)::

    ntl.mode          "all_tokens" | "final_answer"   which reward the NTL trainer recomputes after old_log_prob when
                      (default "all_tokens")          reward.custom_reward_function.path is unset: ntl_reward's
                                                      all_tokens.py (EM * exp(-L/tau)) or final_answer.py
                                                      (exp(-L/tau)); with a path set, that function is used
    ntl.tau           null | number | schedule        reward temperature: null = reward_kwargs.tau (else 1.0);
                                                      a number; or a schedule mapping over training steps,
                                                      {kind: linear, start: 2.0, end: 0.5, total_steps: 1000} /
                                                      {kind: step, milestones: {0: 2.0, 100: 1.0}}
    ntl.method        null | nll | confidence | was | mse   NTL method of the reward (null = the function's own
                                                      default: confidence for final_answer, nll for all_tokens)
    ntl.loss_coef     float >= 0 (default 0.0)        weight of the NTL term added to verl's actor loss (0: verl's
                                                      loss exactly)
    ntl.loss_method   nll | was | mse (default "was") per-token NTL method of that loss term
    ntl.loss_targets  "correct_generated" |           digits the loss term trains: the generated digits of
                      "final_answer" (default         responses whose final answer is correct, or the final answer's
                      "correct_generated")            digits against the ground truth (place-value aligned)
    ntl.fused_actor   auto | true | false             true: the actor computes verl's log-probs and entropy and the
                      (default auto)                  digit log-probs and NTL in one pass over the logits, gradient
                                                      written once; false: verl's own passes plus a pass over the 10
                                                      digit columns; auto: true wherever the Triton kernels run
                                                      (CUDA) and the batch's settings allow it (verl's fused LM head
                                                      has no logits: the digits come from the hidden states
                                                      whatever this says)
    ntl.response_rows_only                            true: the LM head, the logits and the passes over them run only
                      auto | true | false             on the rows whose next token is a response token, at every
                      (default auto)                  stage (update, old_log_prob, reference); outputs keep verl's
                                                      layout, prompt rows 0; an error for a batch that needs prompt
                                                      rows (an SFT loss, distillation); false: every packed row, as
                                                      verl does; auto: true wherever nothing reads prompt rows

verl settings NTL needs (checked at start-up): the v1 trainer (``trainer.use_v1=true``) with
``trainer.v1.trainer_mode=ntl``, the FSDP engine (``actor_rollout_ref.actor.strategy`` fsdp/fsdp2),
``actor_rollout_ref.model.external_lib=verl_integration.plugin``, old log-probs recomputed by the actor (no
``algorithm.rollout_correction.bypass_mode``) and no distillation.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from ntl_kernels import METHODS

from .request import LOSS_METHODS, is_auto_or_bool

MODES = ("all_tokens", "final_answer")
LOSS_TARGETS = ("correct_generated", "final_answer")
PLUGIN_MODULE = "verl_integration.plugin"
TRAINER_MODE = "ntl"
OPTIONS = ("mode", "tau", "method", "loss_coef", "loss_method", "loss_targets", "fused_actor", "response_rows_only")


def select(config, dotted: str, default=None):
    """``config.a.b.c`` for ``dotted='a.b.c'``, or ``default`` where a level is missing or null."""
    node = config
    for part in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return default
        node = node.get(part, None)
    return default if node is None else node


@dataclass(frozen=True)
class NTLSettings:
    """The validated ``ntl`` section (see the module docstring for each option)."""

    mode: str = "all_tokens"
    tau: object = None
    method: str | None = None
    loss_coef: float = 0.0
    loss_method: str = "was"
    loss_targets: str = "correct_generated"
    fused_actor: bool | str = "auto"
    response_rows_only: bool | str = "auto"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ntl.mode must be one of {MODES}, got {self.mode!r}")
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"ntl.method must be null or one of {METHODS}, got {self.method!r}")
        if isinstance(self.loss_coef, bool) or not isinstance(self.loss_coef, numbers.Real) \
                or not 0.0 <= float(self.loss_coef) < float("inf"):
            raise ValueError(f"ntl.loss_coef must be a finite number >= 0, got {self.loss_coef!r}")
        if self.loss_method not in LOSS_METHODS:
            raise ValueError(f"ntl.loss_method must be one of {LOSS_METHODS}, got {self.loss_method!r}")
        if self.loss_targets not in LOSS_TARGETS:
            raise ValueError(f"ntl.loss_targets must be one of {LOSS_TARGETS}, got {self.loss_targets!r}")
        if not is_auto_or_bool(self.fused_actor):
            raise ValueError(f"ntl.fused_actor must be one of auto, true, false; got {self.fused_actor!r}")
        if not is_auto_or_bool(self.response_rows_only):
            raise ValueError(
                f"ntl.response_rows_only must be one of auto, true, false; got {self.response_rows_only!r}")
        self.tau_schedule(reward_kwargs_tau=None)  # a bad tau fails here, at start-up

    @classmethod
    def from_config(cls, config) -> NTLSettings:
        """Read and check ``config.ntl`` (absent: all defaults); unknown keys are an error."""
        section = config.get("ntl", None) if hasattr(config, "get") else None
        if section is None:
            return cls()
        if not hasattr(section, "items"):
            raise ValueError(f"ntl must be a mapping of NTL options {OPTIONS}, got {section!r}")
        values = dict(section.items())
        unknown = sorted(set(values) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown ntl option(s) {unknown}; the options are {OPTIONS}")
        return cls(**{key: value for key, value in values.items() if value is not None})

    def tau_schedule(self, reward_kwargs_tau):
        """The reward's ``TauSchedule``: ``ntl.tau`` if set, else ``reward_kwargs.tau``, else 1.0."""
        from ntl_reward import TauSchedule

        tau = self.tau if self.tau is not None else reward_kwargs_tau if reward_kwargs_tau is not None else 1.0
        if hasattr(tau, "items") and not isinstance(tau, Mapping):
            tau = dict(tau.items())
        try:
            return TauSchedule.from_config(tau)
        except ValueError as error:
            raise ValueError(f"ntl.tau: {error}") from error


def validate_verl_config(config) -> NTLSettings:
    """Check a composed verl config for an NTL run; returns the ``ntl`` settings. Raises ValueError naming the key."""
    settings = NTLSettings.from_config(config)
    if not select(config, "trainer.use_v1", True):
        raise ValueError("NTL needs verl's v1 trainer: set trainer.use_v1=true")
    if select(config, "trainer.v1.trainer_mode") != TRAINER_MODE:
        raise ValueError(f"set trainer.v1.trainer_mode={TRAINER_MODE} to run the NTL trainer")
    strategy = select(config, "actor_rollout_ref.actor.strategy")
    if strategy not in ("fsdp", "fsdp2"):
        raise ValueError(f"NTL runs on the FSDP engine: actor_rollout_ref.actor.strategy is {strategy!r}")
    external = select(config, "actor_rollout_ref.model.external_lib")
    external = [external] if isinstance(external, str) else list(external or [])
    if PLUGIN_MODULE not in external:
        raise ValueError(
            f"set actor_rollout_ref.model.external_lib={PLUGIN_MODULE} so the actor workers build the NTL engine"
        )
    if select(config, "algorithm.rollout_correction.bypass_mode", False):
        raise ValueError(
            "NTL reads the digit log-probs of the actor's old_log_prob pass; "
            "algorithm.rollout_correction.bypass_mode=true skips it"
        )
    if select(config, "distillation.enabled", False):
        raise ValueError("NTL does not combine with distillation (distillation.enabled=true)")
    return settings
