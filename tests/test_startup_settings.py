"""Every NTL and reward setting with a bad value is refused at start-up, naming the key, by the same function the NTL
trainer configures itself with (``configure_ntl_run``): through verl's wrapped ``validate_config`` (the driver,
before Ray starts) and through ``NTLPPOTrainer.configure_ntl`` alike."""

import copy
from pathlib import Path

import pytest
import verl.utils.config
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from tests.gsm8k_scripts import REPO, SCRIPTS, script_overrides
from tests.test_verl_config import composed
from verl_integration.config import REWARD_KWARGS_KEY, configure_ntl_run
from verl_integration.startup import install_startup_check
from verl_integration.trainer import NTLPPOTrainer

DIGITS = "0123456789"


PARTIAL_MERGES = (("1", "2"), ("12", "3"))  # only '12' and '123': no place-value target for '13'
EVERY_PAIR = tuple((a, b) for a in DIGITS for b in DIGITS)  # every 2-digit string, as Llama-3 has every 1-3 digit one


def save_digit_tokenizer(path: Path, *, merges=()) -> str:
    """A tiny BPE tokenizer over the digits, saved as a Hugging Face tokenizer folder: each digit its own token, and
    the merged tokens of ``merges`` (as Llama-3 / GPT-4 style tokenizers merge digits); the digits are ids 3..12."""
    symbols = ["<unk>", "<pad>", "<eos>", *DIGITS, *("".join(pair) for pair in merges)]
    merges = list(merges)
    backend = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=merges, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "digits": save_digit_tokenizer(root / "digits"),
        "merging": save_digit_tokenizer(root / "merging", merges=PARTIAL_MERGES),
        "pairs": save_digit_tokenizer(root / "pairs", merges=EVERY_PAIR),
    }


@pytest.fixture(scope="module")
def overrides_of(tokenizer_dirs):
    """``overrides_of(mode)``: the GSM8K script's overrides for ``mode``, the model pointed at the digit tokenizer."""
    cache = {}

    def of(mode: str) -> list[str]:
        if mode not in cache:
            cache[mode] = script_overrides(SCRIPTS[mode], MODEL=tokenizer_dirs["digits"])
        return cache[mode]

    return of


@pytest.fixture(scope="module")
def script_config(overrides_of):
    """``script_config(mode, overrides)``: the script's composed config with ``overrides`` (``key=value``, hydra's
    ``+``/``++`` prefixes allowed) merged in; hydra composes each script once (seconds each), not once per case."""
    composed_scripts = {}

    def of(mode: str, overrides: list[str]):
        if mode not in composed_scripts:
            composed_scripts[mode] = composed(overrides_of(mode))
        config = copy.deepcopy(composed_scripts[mode])
        OmegaConf.set_struct(config, False)
        return OmegaConf.merge(config, OmegaConf.from_dotlist([override.lstrip("+") for override in overrides]))

    return of


def refuse_at_start_up(config):
    """verl's start-up config check as ``main_ppo`` runs it in the driver, with NTL's check installed."""
    install_startup_check()
    verl.utils.config.validate_config(config, use_reference_policy=False, use_critic=False)


def refuse_in_the_trainer(config):
    object.__new__(NTLPPOTrainer).configure_ntl(config)


KWARGS = f"++{REWARD_KWARGS_KEY}"
# (script, overrides separated by "; ", the key the refusal must name); {merging}: the merging tokenizer's folder
BAD_SETTINGS = [
    ("all_tokens", "++ntl.mode=digits", "ntl.mode"),
    ("all_tokens", "++ntl.tau=0", "ntl.tau"),
    ("all_tokens", "++ntl.tau={kind: wobble}", "ntl.tau"),
    ("all_tokens", "++ntl.method=l2", "ntl.method"),
    ("all_tokens", "++ntl.loss_coef=-1", "ntl.loss_coef"),
    ("all_tokens", "++ntl.loss_method=confidence", "ntl.loss_method"),
    ("all_tokens", "++ntl.loss_targets=everything", "ntl.loss_targets"),
    ("all_tokens", "++ntl.fused_actor=sometimes", "ntl.fused_actor"),
    ("all_tokens", "++ntl.fused_actor=1", "ntl.fused_actor"),
    ("all_tokens", "++ntl.response_rows_only=sometimes", "ntl.response_rows_only"),
    ("all_tokens", "++ntl.response_rows_only=0", "ntl.response_rows_only"),
    ("all_tokens", "++ntl.coef=0.1", "unknown ntl option"),
    ("all_tokens", "trainer.v1.trainer_mode=colocate_async", "trainer.v1.trainer_mode=ntl_colocate_async"),
    ("all_tokens", "trainer.v1.trainer_mode=sync", "trainer.v1.trainer_mode"),
    ("all_tokens", "actor_rollout_ref.model.external_lib=null", "actor_rollout_ref.model.external_lib"),
    ("all_tokens", "actor_rollout_ref.actor.strategy=megatron", "actor_rollout_ref.actor.strategy"),
    ("all_tokens", "algorithm.rollout_correction.bypass_mode=true", "algorithm.rollout_correction.bypass_mode"),
    ("all_tokens", "distillation.enabled=true", "distillation.enabled"),
    ("all_tokens", f"{KWARGS}.tau=0", f"{REWARD_KWARGS_KEY}.tau"),
    ("all_tokens", f"{KWARGS}.tau=-1; ++ntl.tau=0.5", f"{REWARD_KWARGS_KEY}.tau"),
    ("all_tokens", f"{KWARGS}.tau=fast", f"{REWARD_KWARGS_KEY}.tau"),
    ("all_tokens", f"{KWARGS}.taus=0.5", f"{REWARD_KWARGS_KEY}.taus"),
    ("all_tokens", f"{KWARGS}.method=l2", f"{REWARD_KWARGS_KEY}.method"),
    ("all_tokens", f"{KWARGS}.extraction=loose", f"{REWARD_KWARGS_KEY}.extraction"),
    ("all_tokens", f"{KWARGS}.answer_credit=distance", f"{REWARD_KWARGS_KEY}.answer_credit"),
    ("all_tokens", f"{KWARGS}.ntl_info=0", f"{REWARD_KWARGS_KEY}.ntl_info"),
    ("final_answer", f"{KWARGS}.answer_credit=always", f"{REWARD_KWARGS_KEY}.answer_credit"),
    ("final_answer", f"{KWARGS}.method=l2", f"{REWARD_KWARGS_KEY}.method"),
    ("final_answer", f"{KWARGS}.solution_str=x", f"{REWARD_KWARGS_KEY}.solution_str"),
    ("final_answer", "reward.custom_reward_function.path=/no/such/reward.py", "reward.custom_reward_function.path"),
    ("final_answer", "reward.custom_reward_function.name=no_such_function", "reward.custom_reward_function.path"),
    ("all_tokens", "actor_rollout_ref.model.path={merging}", "actor_rollout_ref.model.path"),
    ("all_tokens", "+actor_rollout_ref.model.tokenizer_path={merging}", "actor_rollout_ref.model.tokenizer_path"),
]


@pytest.mark.parametrize(("mode", "override", "named_key"), BAD_SETTINGS)
def test_every_bad_setting_is_refused_at_start_up_and_by_the_trainer_naming_its_key(
    script_config, tokenizer_dirs, mode, override, named_key
):
    config = script_config(mode, override.replace("{merging}", tokenizer_dirs["merging"]).split("; "))
    with pytest.raises(ValueError) as at_start_up:
        refuse_at_start_up(config)
    assert named_key in str(at_start_up.value) and "asks for NTL" in str(at_start_up.value)
    with pytest.raises(ValueError) as in_the_trainer:
        refuse_in_the_trainer(config)
    assert str(at_start_up.value).startswith(str(in_the_trainer.value))  # one check, one message


@pytest.mark.parametrize("mode", sorted(SCRIPTS))
def test_the_scripts_settings_resolve_to_what_the_trainer_uses(overrides_of, mode):
    config = composed(overrides_of(mode) + [f"{KWARGS}.extraction=flexible"])
    refuse_at_start_up(config)  # accepted
    run = configure_ntl_run(config)
    assert run.score_function.__code__.co_filename == str(REPO / "ntl_reward" / f"{mode}.py")
    assert run.reward_kwargs == {"extraction": "flexible"}  # tau follows the schedule, not reward_kwargs
    assert run.tau_schedule.tau_at(0) == 1.0
    assert run.digit_ids == tuple(range(3, 13))  # the digit tokenizer's '0'..'9'
    trainer = object.__new__(NTLPPOTrainer)
    trainer.configure_ntl(config)
    assert trainer.score_function.__code__.co_filename == run.score_function.__code__.co_filename
    assert trainer.reward_kwargs == run.reward_kwargs and trainer.tau_schedule == run.tau_schedule


def test_a_tokenizer_that_merges_digits_into_every_string_of_a_length_runs_on_its_number_tokens(script_config,
                                                                                                 tokenizer_dirs):
    """Llama-3-style merged digits are number tokens with values (here every 1-2 digit string: K = 110); a tokenizer
    merging only some ('12', '123') is refused above, naming the key."""
    config = script_config("final_answer", [f"actor_rollout_ref.model.path={tokenizer_dirs['pairs']}"])
    refuse_at_start_up(config)  # accepted
    assert len(configure_ntl_run(config).digit_ids) == 110


def test_a_tokenizer_not_on_this_machine_is_left_to_the_trainer(overrides_of):
    config = composed(overrides_of("all_tokens") + ["actor_rollout_ref.model.path=ntl-verl-tests/not-a-hub-model"])
    assert configure_ntl_run(config).digit_ids is None


def test_a_custom_reward_function_must_take_what_the_trainer_passes(overrides_of, tmp_path):
    rewards = tmp_path / "rewards.py"
    rewards.write_text(
        "def without_ntl_info(data_source, solution_str, ground_truth, extra_info=None, tau=1.0):\n    return {}\n"
        "def with_kwargs(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n    return {}\n"
    )
    function = ["reward.custom_reward_function.path=" + str(rewards)]
    with pytest.raises(ValueError, match=r"reward\.custom_reward_function: .* takes no \['ntl_info'\]"):
        refuse_at_start_up(composed(overrides_of("all_tokens") + function + [
            "reward.custom_reward_function.name=without_ntl_info"]))
    # a function taking **kwargs takes options ntl_reward does not know
    accepted = composed(overrides_of("all_tokens") + function + [
        "reward.custom_reward_function.name=with_kwargs", f"{KWARGS}.penalty=0.5"])
    refuse_at_start_up(accepted)
    assert configure_ntl_run(accepted).reward_kwargs == {"penalty": 0.5}


@pytest.mark.parametrize("script", ["math/train_math_qwen_grpo_ntl_final_answer.sh",
                                    "gsm8k/train_gsm8k_llama3_ppo_ntl_final_answer.sh"])
def test_the_math_and_llama3_scripts_pass_the_start_up_check(tokenizer_dirs, script):
    """The MATH (GRPO) and Llama-3 example scripts: verl overrides only, accepted as they are (a merging tokenizer
    stands for Llama-3's)."""
    config = composed(script_overrides(REPO / "examples" / script, MODEL=tokenizer_dirs["pairs"]))
    refuse_at_start_up(config)  # accepted
    assert configure_ntl_run(config).settings.mode == "final_answer"
    if script.startswith("math"):
        assert config.algorithm.adv_estimator == "grpo" and config.actor_rollout_ref.rollout.n == 5
