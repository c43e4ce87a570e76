"""verl 0.8.0: engine workers only; ``python -m verl.trainer.main_ppo`` runs the DataProto ``RayPPOTrainer``
(``ray_trainer.NTLRayPPOTrainer`` with NTL), ``main_ppo_sync`` a TransferQueue trainer that NTL does not reach.

The engine has no ``pad_to_length`` yet (0.9.0 added it): a packed micro-batch is padded only for Ulysses, and
``output_args["pad_size"]`` exists only then.
"""

from __future__ import annotations

import sys

from . import v07

trainer_class_slots = v07.trainer_class_slots  # main_ppo reads its trainer class as in 0.7

SYNC_ENTRY_POINT = "verl.trainer.main_ppo_sync"

PLATFORM_REGISTRY = False  # no platform registry (verl 0.9 added ``verl.plugin.platform``)
LOGITS_SCALED_IN_PLACE = True  # prepare_model_outputs divides output.logits by the temperature in place (0.9 divides a copy)


def install() -> None:
    from .. import ray_trainer
    from ..engine import register_engine

    register_engine()
    ray_trainer.install_ray_trainer()


def check_trainer_settings(config) -> None:
    """ValueError when the run is 0.8.0's ``main_ppo_sync`` (its trainer is built in ``__main__``, out of reach)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == SYNC_ENTRY_POINT:
        raise ValueError(f"verl 0.8.0's {SYNC_ENTRY_POINT} cannot carry NTL: run python -m verl.trainer.main_ppo "
                         "(the same overrides) or upgrade to verl 0.9 (trainer.v1.trainer_mode=ntl)")


def packed_pad_size(engine, packed_length: int) -> int:
    return 0


def gather_and_unpad(engine, rows, pad_size: int):
    if engine.use_ulysses_sp:
        from verl.utils.ulysses import gather_outputs_and_unpad

        return gather_outputs_and_unpad(rows, gather_dim=0, unpad_dim=0, padding_size=pad_size)
    return rows
