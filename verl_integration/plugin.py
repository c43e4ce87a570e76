"""Opt-in registration of NTL in verl: import this module (and only then) to enable it.

Importing it installs, for the installed verl's release line (``releases``; verl 0.7.0 to 0.9.x, anything else is
refused here naming the range):

- verl 0.8 / 0.9: ``NTLFSDPEngine`` as the FSDP language-model engine (``EngineRegistry``, every device verl
  registered ``FSDPEngineWithLMHead`` for). For batches without an NTL request the subclass runs verl's code
  unchanged, so other roles in the process (the reference model) are unaffected;
- verl 0.9: the NTL v1 trainer modes (``trainer.v1.trainer_mode=ntl`` / ``ntl_colocate_async`` /
  ``ntl_separate_async``); verl 0.9 with ``trainer.use_v1=false``, 0.8 and 0.7: ``ray_trainer.NTLRayPPOTrainer``
  where ``main_ppo`` looks its trainer up; verl 0.7: the legacy worker that builds ``legacy_actor``'s actor;
- the start-up check (``startup.py``): a run that asks for NTL but would train without it (a trainer mode or
  worker path that does not carry NTL, the plug-in missing, ...) fails in verl's config check, naming the setting.

verl imports it where it is named: ``VERL_USE_EXTERNAL_MODULES=verl_integration.plugin`` at ``import verl`` in every
process (the trainer's included: the trainer class must be ours there), and
``actor_rollout_ref.model.external_lib=verl_integration.plugin`` in the actor workers. Nothing registers on plain
``import verl``.
"""

from __future__ import annotations

from .releases import verl_line
from .startup import install_startup_check

verl_line().install()
install_startup_check()
