"""No silent off-switch: a verl run that asks for NTL but would not train with it fails at start-up, naming the key.

A run asks for NTL when its config has an ``ntl`` section (``+ntl.*``), names the plug-in in
``actor_rollout_ref.model.external_lib``, selects an NTL trainer mode (``trainer.v1.trainer_mode=ntl``, ...) or
scores with one of this project's ``ntl_reward`` files. Such a run must pass ``config.configure_ntl_run``, the
function the NTL trainers configure themselves with: the verl settings NTL needs (a trainer path of the installed
release that carries NTL, ``releases``; FSDP actor, plug-in in ``external_lib``, ...: otherwise verl would run plain
PPO/GRPO and exit 0 - e.g. ``trainer.v1.trainer_mode=sync`` runs verl's trainer, which never recomputes the reward,
so neither the NTL reward nor the NTL loss nor their metrics exist), every ``ntl.*`` option, the reward function and
its ``reward_kwargs`` (no unknown or misspelt key, no bad value) and the model's tokenizer (number tokens). So a run
the trainer would refuse inside Ray is refused here, before the trainer is built.

Where the check runs: verl offers no hook between composing the config and choosing the trainer. The only
code of ours that runs there is the plug-in, imported at ``import verl`` in the driver (``VERL_USE_EXTERNAL_MODULES``
- the NTL setup needs it anyway, else the ``ntl`` trainer mode is unknown - or the ``verl.plugins`` entry point of an
installed ntl-verl). ``install_startup_check()`` therefore wraps verl's own start-up config check,
``verl.utils.config.validate_config``, which ``main_ppo``'s ``main()`` runs on the composed config in the driver
before it picks the legacy or the v1 task runner (and the legacy task runner runs again) in verl 0.9, and in its
task runner's ``run`` (inside Ray, before any worker is built) in 0.7 and 0.8. ``main_ppo`` binds the function when
its module body runs, after ``import verl``, so it binds the wrapped one.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .config import NTL_REWARD_DIR, NTL_SCHEDULES, PLUGIN_MODULE, configure_ntl_run, select


def ntl_requests(config) -> list[str]:
    """The settings of a composed verl config that ask for NTL (empty: an ordinary verl run)."""
    requests = []
    section = config.get("ntl", None) if hasattr(config, "get") else None
    if section is not None:
        keys = sorted(section.keys()) if hasattr(section, "keys") else []
        requests.append(", ".join(f"ntl.{key}" for key in keys) if keys else "ntl")
    external = select(config, "actor_rollout_ref.model.external_lib")
    if PLUGIN_MODULE in ([external] if isinstance(external, str) else list(external or [])):
        requests.append(f"actor_rollout_ref.model.external_lib={PLUGIN_MODULE}")
    mode = select(config, "trainer.v1.trainer_mode")
    if mode in NTL_SCHEDULES:
        requests.append(f"trainer.v1.trainer_mode={mode}")
    reward_path = select(config, "reward.custom_reward_function.path")
    if reward_path and Path(str(reward_path)).resolve().parent == NTL_REWARD_DIR:
        requests.append(f"reward.custom_reward_function.path={reward_path}")
    return requests


def check_ntl_reaches_training(config) -> None:
    """Raise ValueError naming the key when ``config`` asks for NTL but the NTL trainer would not train with it
    (``configure_ntl_run``)."""
    requests = ntl_requests(config)
    if not requests:
        return
    try:
        configure_ntl_run(config)
    except ValueError as error:
        raise ValueError(
            f"{error}. This run asks for NTL ({'; '.join(requests)}) but would not train with it as configured: "
            "fix that setting, or remove the NTL settings for a run without NTL"
        ) from error


def install_startup_check() -> None:
    """Make verl's start-up config check (``verl.utils.config.validate_config``) run ``check_ntl_reaches_training``
    first (idempotent). See the module docstring for why there."""
    from verl.utils import config as verl_config

    if getattr(verl_config.validate_config, "checks_ntl", False):
        return
    verl_validate_config = verl_config.validate_config

    @functools.wraps(verl_validate_config)
    def validate_config(config, *args, **kwargs):
        check_ntl_reaches_training(config)
        return verl_validate_config(config, *args, **kwargs)

    validate_config.checks_ntl = True
    verl_config.validate_config = validate_config
