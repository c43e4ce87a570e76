"""verl-compatible Number Token Loss rewards for verl's numeric math sources (GSM8K ``####``, MATH ``\\boxed{}``,
DAPO/AIME ``Answer:``, routed by ``data_source``: ``formats``): Final-answer and All-tokens modes.

Per-sample, as verl's ``reward.custom_reward_function``: ``ntl_reward/final_answer.py`` and
``ntl_reward/all_tokens.py``, each with ``compute_score``. Batched, for a trainer: ``compute_scores``. The user's
``reward_kwargs``, checked at start-up: ``check_reward_kwargs``.
"""

from .answer import extract_answer, is_correct
from .formats import answer_format, extract_final_answer, is_correct_answer
from .ntl_info import (
    DIGIT_IDS_KEY,
    LOG_PROBS_KEY,
    LOSS_KEY,
    MASK_KEY,
    NUMBER_TEXTS_KEY,
    RESPONSE_IDS_KEY,
    parse_ntl_info,
)
from .options import check_reward_kwargs
from .place_value import PLACE_WEIGHTINGS, check_place_weighting, number_token_places, place_weights
from .schedule import TauSchedule
from .scoring import (
    DEFAULT_METHODS,
    MODES,
    check_tau,
    compute_score,
    compute_scores,
    final_answer_places,
    final_answer_targets,
)

__all__ = [
    "DEFAULT_METHODS",
    "DIGIT_IDS_KEY",
    "LOG_PROBS_KEY",
    "LOSS_KEY",
    "MASK_KEY",
    "MODES",
    "NUMBER_TEXTS_KEY",
    "PLACE_WEIGHTINGS",
    "RESPONSE_IDS_KEY",
    "TauSchedule",
    "check_place_weighting",
    "check_reward_kwargs",
    "check_tau",
    "compute_score",
    "compute_scores",
    "answer_format",
    "extract_answer",
    "extract_final_answer",
    "final_answer_places",
    "final_answer_targets",
    "is_correct",
    "is_correct_answer",
    "number_token_places",
    "parse_ntl_info",
    "place_weights",
]
