"""The GSM8K scripts compose into valid verl 0.9.1 configs; NTL options are checked at start-up; the plug-in is opt-in."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from tests import gsm8k_scripts
from tests.gsm8k_scripts import REPO, SCRIPTS
from tests.verl_cpu import tiny_model_dir
from verl_integration.config import NTLSettings, validate_verl_config

VERL_CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


def script_overrides(script: Path, **env) -> list[str]:
    """The script's hydra overrides, with the model pointed at the local tiny model (verl loads its tokenizer)."""
    return gsm8k_scripts.script_overrides(script, **{"MODEL": tiny_model_dir(), **env})


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


@pytest.mark.parametrize("mode", sorted(SCRIPTS))
def test_script_overrides_compose_into_a_valid_verl_config(mode):
    config = composed(script_overrides(SCRIPTS[mode], TAU="0.5", NTL_LOSS_COEF="0.05"))
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    OmegaConf.resolve(config)
    settings = validate_verl_config(config)
    assert settings.mode == mode and settings.loss_coef == 0.05
    assert config.reward.custom_reward_function.path.endswith(f"ntl_reward/{mode}.py")
    assert config.reward.custom_reward_function.reward_kwargs.tau == 0.5
    assert settings.tau_schedule(config.reward.custom_reward_function.reward_kwargs.tau).tau_at(0) == 0.5
    assert config.trainer.v1.trainer_mode == "ntl"
    assert config.actor_rollout_ref.model.external_lib == "verl_integration.plugin"
    assert config.data.train_batch_size == 256 and config.actor_rollout_ref.actor.optim.lr == 1e-6


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("++ntl.loss_coef=-1", "ntl.loss_coef"),
        ("++ntl.mode=digits", "ntl.mode"),
        ("++ntl.tau=0", "ntl.tau"),
        ("++ntl.method=l2", "ntl.method"),
        ("++ntl.loss_method=confidence", "ntl.loss_method"),
        ("++ntl.loss_targets=everything", "ntl.loss_targets"),
        ("++ntl.coef=0.1", "unknown ntl option"),
        ("actor_rollout_ref.model.use_fused_kernels=true", "use_fused_kernels"),
        ("actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "ulysses_sequence_parallel_size"),
        ("trainer.v1.trainer_mode=sync", "trainer_mode=ntl"),
        ("actor_rollout_ref.model.external_lib=null", "external_lib"),
    ],
)
def test_bad_settings_are_refused_at_start_up_naming_the_key(override, message):
    config = composed(script_overrides(SCRIPTS["all_tokens"]) + [override])
    with pytest.raises(ValueError, match=message):
        validate_verl_config(config)


def test_tau_schedule_from_the_ntl_section():
    settings = NTLSettings(tau={"kind": "linear", "start": 2.0, "end": 0.5, "total_steps": 100})
    schedule = settings.tau_schedule(reward_kwargs_tau=1.0)
    assert schedule.tau_at(0) == 2.0 and schedule.tau_at(50) == pytest.approx(1.25) and schedule.tau_at(500) == 0.5
    assert NTLSettings().tau_schedule(reward_kwargs_tau=None).tau_at(3) == 1.0


def test_registration_is_opt_in():
    probe = (
        "import verl\n"
        "from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "print('ntl' in TRAINER_REGISTRY, EngineRegistry._engines['language_model']['fsdp']['cuda'].__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for inherited in ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM"):
        env.pop(inherited, None)
    plain = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.split() == ["False", "FSDPEngineWithLMHead"]
    env["VERL_USE_EXTERNAL_MODULES"] = "verl_integration.plugin"
    opted_in = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert opted_in.stdout.split() == ["True", "NTLFSDPEngine"]
