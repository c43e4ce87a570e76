"""Opt-in registration of NTL in verl: import this module (and only then) to enable it.

Importing it
- makes ``NTLFSDPEngine`` the FSDP language-model engine (``EngineRegistry``, every device verl registered
  ``FSDPEngineWithLMHead`` for). For batches without an NTL request the subclass runs verl's code unchanged, so
  other roles in the process (the reference model) are unaffected;
- registers the ``ntl`` trainer mode (``trainer.v1.trainer_mode=ntl`` -> ``NTLPPOTrainer``);
- installs the start-up check (``startup.py``): a run that asks for NTL but would train without it (legacy trainer,
  another trainer mode, ...) fails in verl's config check, before the trainer is chosen.

verl imports it where it is named: ``actor_rollout_ref.model.external_lib=verl_integration.plugin`` in the actor
workers (before the engine is built), and ``VERL_USE_EXTERNAL_MODULES=verl_integration.plugin`` at ``import verl`` in
every process, the trainer's included (the trainer mode must exist there). Nothing registers on plain ``import verl``.
"""

from __future__ import annotations

from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from . import trainer  # noqa: F401  (registers the "ntl" trainer mode)
from .engine import NTLFSDPEngine
from .startup import install_startup_check

MODEL_TYPE = "language_model"


def register_engine() -> None:
    """Replace verl's ``FSDPEngineWithLMHead`` by ``NTLFSDPEngine`` wherever it is registered (idempotent)."""
    for device_to_engine in EngineRegistry._engines.get(MODEL_TYPE, {}).values():
        for device, engine_cls in device_to_engine.items():
            if engine_cls is FSDPEngineWithLMHead:
                device_to_engine[device] = NTLFSDPEngine


register_engine()
install_startup_check()
