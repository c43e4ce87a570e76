"""The user's reward options (verl's ``reward.custom_reward_function.reward_kwargs``), checked before a run starts.

verl passes ``reward_kwargs`` to ``compute_score`` as keyword arguments on every call, next to keys of its own
(``reward_router_address``, ``reward_model_tokenizer``), so ``compute_score`` must accept unknown keys and cannot
tell a misspelt option (``taus=0.5``) from them: the option would be ignored silently. ``check_reward_kwargs``
is the check for the user's keys alone, to run once at start-up. ``tau`` there is a number: verl binds
``reward_kwargs`` into every call of the function (rollout and validation scoring too), so a schedule belongs in
``ntl.tau``, which only the NTL trainer reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ntl_kernels import METHODS

from .answer import EXTRACTIONS
from .place_value import PLACE_WEIGHTINGS
from .scoring import ANSWER_CREDITS, MODES, check_tau

# The options each mode's compute_score takes (its keyword-only parameters but ntl_info, which the trainer passes).
REWARD_OPTIONS = {
    "final_answer": ("tau", "method", "extraction", "answer_credit", "place_weighting"),
    "all_tokens": ("tau", "method", "extraction", "place_weighting"),
}


def _mode(mode_or_path) -> str:
    """A mode name, or the path of its reward file (``.../ntl_reward/final_answer.py``: its stem)."""
    if isinstance(mode_or_path, (str, Path)):
        name = Path(mode_or_path).stem if str(mode_or_path).endswith(".py") else str(mode_or_path)
        if name in MODES:
            return name
    raise ValueError(
        f"the reward mode must be one of {MODES} or the path of ntl_reward/<mode>.py, got {mode_or_path!r}"
    )


def _choice(value, choices: tuple, key: str):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")
    return value


def check_reward_kwargs(mode_or_path, reward_kwargs: Mapping | None, *, key: str = "reward_kwargs") -> dict:
    """Check the user's reward options for one of our rewards; returns them checked, or raises ValueError.

    Args:
        mode_or_path: ``"final_answer"`` / ``"all_tokens"``, or the reward file's path as configured in
            ``reward.custom_reward_function.path`` (``.../ntl_reward/final_answer.py``).
        reward_kwargs: the mapping of options (a dict or OmegaConf DictConfig; None = no options).
        key: how errors name the mapping (verl: ``reward.custom_reward_function.reward_kwargs``).
    Returns:
        A dict with the same keys: ``tau`` a float; ``method`` (None keeps the mode's default), ``extraction``,
        ``answer_credit``, ``place_weighting`` as given.
    Raises:
        ValueError naming ``<key>.<option>``: an unknown option (the message lists the accepted ones), tau not a
        positive finite number (NaN, inf, <= 0, a bool, a string, a schedule), a method, extraction or
        answer_credit or place_weighting outside its choices.
    """
    mode = _mode(mode_or_path)
    accepted = REWARD_OPTIONS[mode]
    if reward_kwargs is None:
        return {}
    if not hasattr(reward_kwargs, "items"):
        raise ValueError(f"{key} must be a mapping of options {accepted}, got {reward_kwargs!r:.80}")
    options = dict(reward_kwargs.items())
    unknown = sorted(str(option) for option in options if option not in accepted)
    if unknown:
        raise ValueError(
            f"unknown option {', '.join(f'{key}.{option}' for option in unknown)} for the {mode} reward; "
            f"it accepts {', '.join(f'{key}.{option}' for option in accepted)}"
        )
    checked = {}
    for option, value in options.items():
        name = f"{key}.{option}"
        if option == "tau":
            if hasattr(value, "items"):
                raise ValueError(f"{name} must be a number (verl passes it on every call); a schedule goes in ntl.tau")
            checked[option] = check_tau(value, name)
        elif option == "method":
            checked[option] = None if value is None else _choice(value, METHODS, name)
        elif option == "extraction":
            checked[option] = _choice(value, EXTRACTIONS, name)
        elif option == "place_weighting":
            checked[option] = _choice(value, PLACE_WEIGHTINGS, name)
        else:
            checked[option] = _choice(value, ANSWER_CREDITS, name)
    return checked
