"""verl 0.7.x: ``main_ppo`` runs the DataProto ``RayPPOTrainer`` on the legacy workers (``fsdp_workers``, chosen by
``trainer.use_legacy_worker_impl=auto``, the default) or on the engine workers (``=disable``).

NTL runs on the legacy workers: ``legacy_actor`` installs its worker subclass where ``main_ppo``'s task runner
looks the worker class up and ``ray_trainer.NTLRayPPOTrainer`` where it looks the trainer up. Both lookups happen
in the task runner's process, after ``import verl``: the plug-in must be imported there, which in 0.7.1 only
``VERL_USE_EXTERNAL_MODULES`` does (``actor_rollout_ref.model.external_lib`` is imported later, in the workers).
verl runs its config check (``validate_config``, with NTL's start-up check) in that same process, so the check can
see whether the plug-in is installed.
"""

from __future__ import annotations

import verl
from packaging.version import Version

from ..config import PLUGIN_MODULE, select

LEGACY_WORKERS = ("auto", "enable")
PLATFORM_REGISTRY = False  # no platform registry (verl 0.9 added ``verl.plugin.platform``)
# up to 0.7.0 DataParallelPPOActor's ``_forward_micro_batch`` returns ``(entropy, log_probs)`` and its
# ``compute_log_prob`` ``(log_probs, entropys)``; from 0.7.1 both return a dict (log_probs, entropys, ...)
MICRO_BATCH_OUTPUTS_ARE_DICTS = Version(verl.__version__).release >= (0, 7, 1)



def install() -> None:
    from .. import legacy_actor, ray_trainer

    legacy_actor.install_legacy_worker()
    ray_trainer.install_ray_trainer()


def installed() -> bool:
    from .. import legacy_actor, ray_trainer

    return legacy_actor.legacy_worker_installed() and ray_trainer.ray_trainer_installed()


def trainer_class_slots() -> list[tuple[str, str]]:
    """Where ``main_ppo``'s task runner reads its trainer class: the name its body binds from ``ray_trainer`` after
    ``import verl`` (also when it runs as ``__main__``: Ray pickles that task runner with the bound class), and
    ``verl.trainer.main_ppo``'s where that module is imported."""
    import sys

    slots = [("verl.trainer.ppo.ray_trainer", "RayPPOTrainer")]
    if "verl.trainer.main_ppo" in sys.modules:
        slots.append(("verl.trainer.main_ppo", "RayPPOTrainer"))
    return slots


def check_trainer_settings(config) -> None:
    """ValueError naming the setting when the run would train on verl's own worker or trainer."""
    workers = select(config, "trainer.use_legacy_worker_impl", "auto")
    if workers not in LEGACY_WORKERS:
        raise ValueError(f"trainer.use_legacy_worker_impl={workers}: on verl 0.7 NTL runs on the legacy workers; "
                         "set it to auto (the default) or enable")
    if not installed():
        raise ValueError(f"the NTL plug-in is not imported in verl's task runner: set "
                         f"VERL_USE_EXTERNAL_MODULES={PLUGIN_MODULE} in the environment of the run")
