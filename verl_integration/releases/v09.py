"""verl 0.9.x: the engine workers everywhere; the v1 trainer (``trainer.use_v1=true``, default) with its trainer modes
and the deprecated DataProto trainer (``trainer.use_v1=false``, ``main_ppo_v0``).

NTL runs in the v1 modes ``ntl`` (verl's ``sync`` schedule), ``ntl_colocate_async`` and ``ntl_separate_async``
(``trainer.NTL_SCHEDULES``): each is verl's trainer of that schedule with the NTL reward recomputed after
``old_log_prob``. ``use_v1=false`` runs ``ray_trainer.NTLRayPPOTrainer``. Since 0.9.0 the engine right-pads a packed
micro-batch for ``pad_to_length`` (``_get_packed_pad_size``) and takes that and the Ulysses padding off again in
``_gather_and_unpad_packed``.
"""

from __future__ import annotations

from ..config import NTL_SCHEDULES, select

PLATFORM_REGISTRY = True  # ``verl.plugin.platform``: the device platform is chosen and registered there
LOGITS_SCALED_IN_PLACE = False  # prepare_model_outputs divides a copy of the logits by the temperature (0.8 divided them in place)


def install() -> None:
    from .. import ray_trainer, trainer  # noqa: F401  (importing trainer registers the NTL trainer modes)
    from ..engine import register_engine

    register_engine()
    ray_trainer.install_ray_trainer()


def trainer_class_slots() -> list[tuple[str, str]]:
    """``trainer.use_v1=false``: ``main_ppo`` imports ``main_ppo_v0`` (lazily, after the plug-in), whose task runner
    builds the ``RayPPOTrainer`` bound there."""
    return [("verl.trainer.main_ppo_v0", "RayPPOTrainer")]


def check_trainer_settings(config) -> None:
    """ValueError naming the setting when the trainer the config selects cannot carry NTL."""
    if not select(config, "trainer.use_v1", True):
        return  # main_ppo_v0 builds ray_trainer.NTLRayPPOTrainer
    mode = select(config, "trainer.v1.trainer_mode")
    if mode in NTL_SCHEDULES:
        return
    ntl_modes = {schedule: name for name, schedule in NTL_SCHEDULES.items()}
    if mode in ntl_modes:
        raise ValueError(f"trainer.v1.trainer_mode={mode} runs verl's trainer without NTL: set "
                         f"trainer.v1.trainer_mode={ntl_modes[mode]} (verl's {mode} schedule with the NTL reward)")
    raise ValueError(f"trainer.v1.trainer_mode={mode} cannot carry NTL; the NTL trainer modes are "
                     f"{sorted(NTL_SCHEDULES)} (verl's {sorted(ntl_modes)} schedules)")


def packed_pad_size(engine, packed_length: int) -> int:
    return engine._get_packed_pad_size(packed_length)


def gather_and_unpad(engine, rows, pad_size: int):
    return engine._gather_and_unpad_packed(rows, pad_size)
