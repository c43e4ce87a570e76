"""Engine settings NTL cannot run with, refused with a message that says which key to change."""

from __future__ import annotations

FUSED_KERNELS_ERROR = (
    "NTL needs the actor's logits, but actor_rollout_ref.model.use_fused_kernels=True computes log-probs inside the "
    "LM head and never forms them; set actor_rollout_ref.model.use_fused_kernels=False for NTL runs"
)
SEQUENCE_PARALLEL_ERROR = (
    "NTL does not support Ulysses sequence parallelism yet; set "
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size=1 for NTL runs"
)


def check_engine_supports_ntl(*, use_fused_kernels: bool, ulysses_sequence_parallel_size: int) -> None:
    """Raise ValueError for engine settings NTL cannot run with (called at start-up and on every NTL batch)."""
    if use_fused_kernels:
        raise ValueError(FUSED_KERNELS_ERROR)
    if ulysses_sequence_parallel_size > 1:
        raise ValueError(SEQUENCE_PARALLEL_ERROR)
