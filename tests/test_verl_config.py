"""The GSM8K scripts compose into valid verl 0.9.1 configs; verl's own config check refuses a run that asks for NTL but
would not train with it; the plug-in is opt-in. (Every bad setting, refused at start-up: test_startup_settings.py.)"""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools
import verl
import verl.utils.config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from tests import gsm8k_scripts
from tests.gsm8k_scripts import REPO, SCRIPTS
from tests.verl_cpu import tiny_model_dir
from verl_integration.config import NTLSettings, configure_ntl_run, validate_verl_config
from verl_integration.releases import line_name
from verl_integration.startup import check_ntl_reaches_training, install_startup_check, ntl_requests

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
    run = configure_ntl_run(config)  # what the start-up check and the trainer resolve
    settings = run.settings
    assert settings.mode == mode and settings.loss_coef == 0.05
    assert config.reward.custom_reward_function.path.endswith(f"ntl_reward/{mode}.py")
    assert config.reward.custom_reward_function.reward_kwargs.tau == 0.5
    assert run.tau_schedule.tau_at(0) == 0.5 and run.reward_kwargs == {}
    assert run.digit_ids == QWEN2_5_DIGIT_IDS  # the model's tokenizer, checked at start-up
    assert config.trainer.v1.trainer_mode == "ntl"
    assert config.actor_rollout_ref.model.external_lib == "verl_integration.plugin"
    assert config.data.train_batch_size == 256 and config.actor_rollout_ref.actor.optim.lr == 1e-6


@pytest.mark.parametrize(("override", "expected"), [
    ([], "auto"), (["++ntl.fused_actor=false"], False), (["++ntl.fused_actor=true"], True),
    (["++ntl.fused_actor=auto", "actor_rollout_ref.model.use_fused_kernels=true",
      "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"], "auto"),
])
def test_fused_actor_option_reaches_the_request(override, expected):
    from verl_integration.trainer import NTLPPOTrainer

    config = composed(script_overrides(SCRIPTS["all_tokens"]) + override)
    settings = validate_verl_config(config)
    trainer = object.__new__(NTLPPOTrainer)
    trainer.ntl = settings
    assert settings.fused_actor == expected
    assert trainer.make_ntl_request(qwen2_5_tokenizer()).fused_actor == expected


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


def test_the_settings_that_ask_for_ntl_are_named():
    assert ntl_requests(composed(script_overrides(SCRIPTS["all_tokens"]))) == [
        "ntl.loss_coef, ntl.mode",
        "actor_rollout_ref.model.external_lib=verl_integration.plugin",
        "trainer.v1.trainer_mode=ntl",
        f"reward.custom_reward_function.path={REPO}/ntl_reward/all_tokens.py",
    ]
    plain_verl = composed([])
    assert ntl_requests(plain_verl) == []
    check_ntl_reaches_training(plain_verl)  # an ordinary verl run is left alone


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.v1.trainer_mode=sync"], r"trainer\.v1\.trainer_mode=ntl .*asks for NTL \(ntl\.loss_coef, ntl\.mode;"),
        (["trainer.v1.trainer_mode=separate_async"], r"trainer\.v1\.trainer_mode=ntl_separate_async .*asks for NTL"),
    ],
)
def test_verls_own_config_check_refuses_ntl_that_would_not_reach_training(overrides, message):
    install_startup_check()
    config = composed(script_overrides(SCRIPTS["all_tokens"]) + overrides)
    with pytest.raises(ValueError, match=message):
        verl.utils.config.validate_config(
            config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
        )


@pytest.mark.parametrize("overrides", [["trainer.use_v1=false"], ["trainer.v1.trainer_mode=ntl_colocate_async"],
                                       ["trainer.v1.trainer_mode=ntl_separate_async"]])
def test_the_other_trainer_paths_of_verl_0_9_carry_ntl(overrides):
    check_ntl_reaches_training(composed(script_overrides(SCRIPTS["all_tokens"]) + overrides))


def test_an_ntl_section_on_a_plain_verl_run_is_refused():
    with pytest.raises(ValueError, match=r"trainer_mode=ntl.*asks for NTL \(ntl\.loss_coef\)"):
        check_ntl_reaches_training(composed(["+ntl.loss_coef=0.1"]))


def test_the_installed_entry_point_only_installs_the_start_up_check(tmp_path, monkeypatch):
    """verl loads ``verl.plugins`` entry points at ``import verl``: ours (as setup.py declares it, installed here as a
    stand-in distribution) must install the check without registering NTL."""
    declared = {}
    monkeypatch.chdir(REPO)  # setup.py reads README.md
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: declared.update(kwargs))
    runpy.run_path(str(REPO / "setup.py"))
    dist_info = tmp_path / "ntl_verl_entry_point_probe-0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ntl-verl-entry-point-probe\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "\n".join(entries) + "\n" for group, entries in declared["entry_points"].items())
    )
    probe = (
        "import verl\n"
        "from verl.utils import config\n"
        "from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "print(getattr(config.validate_config, 'checks_ntl', False), 'ntl' in TRAINER_REGISTRY,\n"
        "      EngineRegistry._engines['language_model']['fsdp']['cuda'].__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    loaded = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == ["True", "False", "FSDPEngineWithLMHead"]


@pytest.mark.parametrize(("version", "line"), [("0.7.0", "v07"), ("0.7.1", "v07"), ("0.8.0", "v08"), ("0.9.0", "v09"),
                                               ("0.9.1", "v09"), ("0.9.2.dev0", "v09")])
def test_each_supported_verl_release_has_its_line_adapter(version, line):
    assert line_name(version) == line


@pytest.mark.parametrize("version", ["0.4.1", "0.5.0", "0.6.1", "0.10.0", "1.0.0"])
def test_other_verl_releases_are_refused_naming_the_supported_range(version):
    with pytest.raises(ValueError, match=rf"NTL supports verl 0\.7\.0 to 0\.9\.x; this is verl {re.escape(version)}"):
        line_name(version)
