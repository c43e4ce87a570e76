"""Engine settings NTL cannot run with, refused with a message that says which key to change."""

from __future__ import annotations

SEQUENCE_PARALLEL_ERROR = (
    "NTL does not support Ulysses sequence parallelism yet; set "
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size=1 for NTL runs"
)


def check_engine_supports_ntl(*, ulysses_sequence_parallel_size: int) -> None:
    """Raise ValueError for engine settings NTL cannot run with (called at start-up and on every NTL batch)."""
    if ulysses_sequence_parallel_size > 1:
        raise ValueError(SEQUENCE_PARALLEL_ERROR)
