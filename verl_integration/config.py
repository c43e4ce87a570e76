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
    ntl.loss_place_weighting                          weights of the loss term's positions by the place of their
                      "none" | "place"                token's most significant digit (ntl_reward.place_value):
                      (default "none")                none = 1 each; place = 1 + place (units 1, tens 2, ...)
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

verl settings NTL needs (checked at start-up): a trainer path of the installed verl release that carries NTL
(``releases``: on 0.9.x an NTL v1 trainer mode, ``trainer.v1.trainer_mode=ntl`` / ``ntl_colocate_async`` /
``ntl_separate_async``, or ``trainer.use_v1=false``; on 0.8.0 ``main_ppo``; on 0.7.x the legacy workers), FSDP
(``actor_rollout_ref.actor.strategy`` fsdp/fsdp2),
``actor_rollout_ref.model.external_lib=verl_integration.plugin``, old log-probs recomputed by the actor (no
``algorithm.rollout_correction.bypass_mode``) and no distillation.

``configure_ntl_run`` is the one function that reads and checks all of it - the ``ntl`` section, the verl settings
above, the reward function with its ``reward_kwargs`` and the model's tokenizer - for both the start-up check (in the
driver, before Ray starts: ``startup.py``) and the NTL trainer, so whatever the trainer would refuse is refused at
start-up, naming the key.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import ntl_reward
from ntl_reward import check_place_weighting
from ntl_kernels import METHODS, number_tokens
from ntl_reward import TauSchedule, check_tau
from ntl_reward import check_reward_kwargs as check_ntl_reward_options

from .request import LOSS_METHODS, is_auto_or_bool

MODES = ("all_tokens", "final_answer")
LOSS_TARGETS = ("correct_generated", "final_answer")
PLUGIN_MODULE = "verl_integration.plugin"
TRAINER_MODE = "ntl"
# the v1 trainer modes this project registers (verl 0.9.x) -> the schedule of verl's each runs
NTL_SCHEDULES = {TRAINER_MODE: "sync", "ntl_colocate_async": "colocate_async",
                 "ntl_separate_async": "separate_async"}
OPTIONS = ("mode", "tau", "method", "loss_coef", "loss_method", "loss_targets", "loss_place_weighting", "fused_actor",
           "response_rows_only")
REWARD_FUNCTION_KEY = "reward.custom_reward_function"
REWARD_KWARGS_KEY = f"{REWARD_FUNCTION_KEY}.reward_kwargs"
NTL_REWARD_DIR = Path(ntl_reward.__file__).resolve().parent
# what the trainer passes to compute_score on every call, besides reward_kwargs (method: when ntl.method is set)
PER_SAMPLE_ARGUMENTS = ("data_source", "solution_str", "ground_truth", "extra_info", "ntl_info")


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
    loss_place_weighting: str = "none"
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
        check_place_weighting(self.loss_place_weighting, "ntl.loss_place_weighting")
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
        """The reward's ``TauSchedule``: ``ntl.tau`` if set, else ``reward_kwargs.tau``, else 1.0. A bad value is
        refused naming the key it came from."""
        if self.tau is not None:
            tau, key = self.tau, "ntl.tau"
        else:
            tau, key = (1.0 if reward_kwargs_tau is None else reward_kwargs_tau), f"{REWARD_KWARGS_KEY}.tau"
        if hasattr(tau, "items") and not isinstance(tau, Mapping):
            tau = dict(tau.items())
        try:
            return TauSchedule.from_config(tau)
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error


def validate_verl_config(config) -> NTLSettings:
    """Check a composed verl config for an NTL run; returns the ``ntl`` settings. Raises ValueError naming the key."""
    from .releases import verl_line

    settings = NTLSettings.from_config(config)
    verl_line().check_trainer_settings(config)
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


@dataclass(frozen=True)
class NTLRun:
    """Everything an NTL run is configured with, checked (``configure_ntl_run``).

    ``settings``: the ``ntl`` section; ``score_function``: the verl-style ``compute_score`` the trainer calls after
    old_log_prob; ``reward_kwargs``: passed to every call of it (``tau`` excluded: it follows ``tau_schedule``);
    ``tau_schedule``: the reward temperature over training steps; ``digit_ids``: the number-token ids of the model's
    tokenizer (``ntl_kernels.number_tokens``: the 10 digits, or every 1-3 digit token of a tokenizer that merges
    digits), None where that tokenizer is not on this machine (the trainer then checks it when it loads it).
    """

    settings: NTLSettings
    score_function: Callable
    reward_kwargs: dict
    tau_schedule: TauSchedule
    digit_ids: tuple[int, ...] | None


def configure_ntl_run(config) -> NTLRun:
    """Check a composed verl config for an NTL run and resolve what the trainer needs; ValueError naming the key.

    The start-up check and ``NTLPPOTrainer`` both call this, so a setting the trainer would refuse is refused at
    start-up, before Ray starts: the ``ntl`` section and the verl settings (``validate_verl_config``), the reward
    function (``reward.custom_reward_function.path``/``name``, else ntl_reward's for ``ntl.mode``), the
    ``reward_kwargs`` (``check_reward_kwargs``), the reward temperature, and the model's tokenizer, which must have
    number tokens (``number_tokens``).
    """
    settings = validate_verl_config(config)
    score_function = load_score_function(config, settings.mode)
    reward_kwargs = dict(select(config, REWARD_KWARGS_KEY) or {})
    check_reward_kwargs(score_function, reward_kwargs, passes_method=settings.method is not None)
    tau_schedule = settings.tau_schedule(reward_kwargs.pop("tau", None))
    return NTLRun(settings, score_function, reward_kwargs, tau_schedule, model_digit_ids(config))


def default_score_function(mode: str) -> Callable:
    """ntl_reward's verl-style ``compute_score`` for ``mode`` ("all_tokens" or "final_answer")."""
    if mode == "final_answer":
        from ntl_reward.final_answer import compute_score
    else:
        from ntl_reward.all_tokens import compute_score
    return compute_score


def load_score_function(config, mode: str) -> Callable:
    """The configured reward function, loaded as verl loads it (``load_extern_object``), or ntl_reward's for ``mode``
    when ``reward.custom_reward_function.path`` is unset."""
    path = select(config, f"{REWARD_FUNCTION_KEY}.path")
    if not path:
        return default_score_function(mode)
    from verl.utils.import_utils import load_extern_object

    name = select(config, f"{REWARD_FUNCTION_KEY}.name", "compute_score")
    try:
        return load_extern_object(module_path=str(path), object_name=name)
    except (OSError, ImportError, AttributeError, RuntimeError) as error:
        cause = f": {error.__cause__!r}" if error.__cause__ is not None else ""
        raise ValueError(f"{REWARD_FUNCTION_KEY}.path={path} (name={name}) does not load: {error}{cause}") from error


def is_ntl_reward_function(function) -> bool:
    """``function`` is defined in the ntl_reward package (loaded by path or imported)."""
    code = getattr(function, "__code__", None)
    return code is not None and Path(code.co_filename).resolve().parent == NTL_REWARD_DIR


def check_reward_kwargs(score_function, reward_kwargs: Mapping, *, passes_method: bool) -> None:
    """Refuse, naming ``reward.custom_reward_function.reward_kwargs.<key>``, the reward options the trainer's calls
    ``score_function(data_source=, solution_str=, ground_truth=, extra_info=, ntl_info=, tau=[, method=],
    **reward_kwargs)`` would fail on or silently ignore, and a ``score_function`` that cannot take those arguments.

    - a key the trainer passes itself, per sample (``ntl_info``, ``solution_str``, ...);
    - for ntl_reward's functions, ``ntl_reward.check_reward_kwargs`` (each key one of the function's options, each
      value valid): they take ``**unused`` (verl passes extra arguments), which would swallow a misspelt ``taus``;
    - for any other function, a key it has no parameter for, unless it takes ``**kwargs``; and ``tau``, which the
      trainer reads as the reward temperature whatever the function.
    """
    parameters = inspect.signature(score_function).parameters.values()
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any_keyword = any(p.kind == p.VAR_KEYWORD for p in parameters)
    passed = (*PER_SAMPLE_ARGUMENTS, "tau", *(("method",) if passes_method else ()))
    missing = [name for name in passed if name not in named]
    if missing and not takes_any_keyword:
        raise ValueError(
            f"{REWARD_FUNCTION_KEY}: the NTL trainer calls the reward function with {passed}, but "
            f"{_function_name(score_function)} takes no {missing}"
        )
    for key in reward_kwargs:
        if key in PER_SAMPLE_ARGUMENTS:
            raise ValueError(f"{REWARD_KWARGS_KEY}.{key}: the NTL trainer passes {key} itself, per sample; remove it")
    if is_ntl_reward_function(score_function):
        check_ntl_reward_options(score_function.__code__.co_filename, reward_kwargs, key=REWARD_KWARGS_KEY)
        return
    for key in reward_kwargs:
        if key not in named and not takes_any_keyword:
            raise ValueError(
                f"unknown reward option {REWARD_KWARGS_KEY}.{key}: {_function_name(score_function)} takes "
                f"{sorted(named - set(PER_SAMPLE_ARGUMENTS))}"
            )
    if "tau" in reward_kwargs:
        check_tau(reward_kwargs["tau"], f"{REWARD_KWARGS_KEY}.tau")


def _function_name(function) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"


def model_digit_ids(config) -> tuple[int, ...] | None:
    """The number-token ids of the actor model's tokenizer (``actor_rollout_ref.model.tokenizer_path``, else
    ``.path``), loaded as verl loads it (``hf_tokenizer``, ``trust_remote_code`` as configured) where it is on this
    machine (a local folder, or the Hugging Face cache); None where it is not (the trainer loads it later).

    Raises ValueError naming the key when the tokenizer has no usable number-token set (``number_tokens``).
    """
    key = "actor_rollout_ref.model.tokenizer_path"
    path = select(config, key)
    if path is None:
        key = "actor_rollout_ref.model.path"
        path = select(config, key)
    if path is None:
        return None
    from verl.utils import hf_tokenizer

    trust_remote_code = bool(select(config, "actor_rollout_ref.model.trust_remote_code", False))
    path = str(path)
    try:
        if os.path.isdir(path):
            tokenizer = hf_tokenizer(path, trust_remote_code=trust_remote_code)
        else:
            tokenizer = hf_tokenizer(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as error:
        if os.path.isdir(path):
            raise ValueError(f"{key}={path}: its tokenizer does not load: {error}") from error
        return None  # a Hub name not in the local cache, or a remote path: the trainer's tokenizer is checked
    try:
        return tuple(number_tokens(tokenizer).ids.tolist())
    except ValueError as error:
        raise ValueError(f"{key}={path}: {error}") from error
