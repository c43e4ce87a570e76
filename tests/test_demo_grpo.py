"""The demo's GRPO loop through verl_integration is sound: it learns a trivially learnable reward, and the engine's
``old_log_prob`` scores the rollout's tokens as the rollout model sampled them, after every weight copy.

One loop (module fixture) serves both tests: a tiny Qwen2 policy (Qwen2.5 vocabulary) taught to answer with a few
digits, then GRPO steps with the reward "the response contains a 7" (about 1 - 0.9^4 = 0.34 of 4-digit answers
at the start): rollout -> the NTL engine's old_log_prob -> ``verl_integration.reward_step.ntl_reward_step`` with
that reward -> verl's GRPO advantage -> verl's ``ppo_loss`` update -> weights copied into the rollout model.
"""

from __future__ import annotations

import contextlib
import io
import random

import pytest
import torch

from ntl_demo import pipeline
from ntl_demo.policy import build_policy, load_tokenizer
from ntl_demo.rollout import right_padded, sample_responses
from ntl_demo.warmup import encode_response, supervised_warmup
from ntl_kernels import digit_token_ids, number_tokens
from verl_integration.reward_step import ntl_reward_step

STEPS = 25
PROMPTS = ("Number:", "Digits:", "Code:", "PIN:")


def contains_a_seven(data_source=None, solution_str="", ground_truth=None, extra_info=None, **unused) -> dict:
    """A verl-style reward anyone can learn: 1 when the response contains the digit 7."""
    return {"score": float("7" in solution_str), "exact_match": 0}


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """(mean reward per step, largest |engine old_log_prob - rollout log-prob| per step). The digit statistics run
    their torch path, as in a CPU demo run (the interpreted Triton kernels are tested on their own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "0")
        return _grpo_run(tmp_path_factory.mktemp("digits_policy"))


def _grpo_run(model_dir):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(None)
    digit_ids = digit_token_ids(tokenizer)
    rng = random.Random(0)
    # short plain prompts (no chat template): the engine scores every prompt token against the whole vocabulary
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in PROMPTS]
    pairs = [(prompt, encode_response(tokenizer, f"{rng.randrange(10**4):04d}")) for prompt in prompts for _ in range(50)]
    model = build_policy(None, seed=0, device="cpu", hidden_size=32, num_layers=1)
    supervised_warmup(model, pairs, pad_token_id=tokenizer.pad_token_id, steps=40, batch_size=16, lr=1e-2, seed=0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    with contextlib.redirect_stdout(io.StringIO()):  # verl's engine set-up report
        engine = pipeline.PolicyEngine(model_dir, numbers=number_tokens(tokenizer), lr=3e-3, ntl_coef=0.0,
                                       ntl_method="was", max_token_len=4096, total_steps=STEPS, device="cpu")
    model.load_state_dict(dict(engine.rollout_weights()))
    generator = torch.Generator().manual_seed(0)
    rewards, logprob_gaps = [], []
    for _ in range(STEPS):
        rollout = sample_responses(model, tokenizer, prompts, group_size=4, max_new_tokens=6, temperature=1.0,
                                   generator=generator)
        responses, response_mask = right_padded(rollout.response_ids, tokenizer.pad_token_id)
        old_log_probs, digit_log_probs = engine.old_log_probs(rollout.prompt_ids, rollout.response_ids, 1.0)
        sampled_log_probs, _ = right_padded(rollout.log_probs, 0.0)
        logprob_gaps.append(float(((old_log_probs - sampled_log_probs).abs() * response_mask).max()))
        step = ntl_reward_step(
            responses=responses, response_mask=response_mask, digit_log_probs=digit_log_probs,
            solution_strs=rollout.texts, ground_truths=["0"] * len(rollout.texts),
            data_sources=["test"] * len(rollout.texts), extra_infos=[{} for _ in rollout.texts],
            compute_score=contains_a_seven, digit_ids=digit_ids, tau=1.0,
        )
        rewards.append(float(step.rm_scores.sum(-1).mean()))
        advantages = pipeline.grpo_advantages(step.rm_scores, response_mask, rollout.group)
        engine.update(rollout.prompt_ids, rollout.response_ids, old_log_probs=old_log_probs, advantages=advantages,
                      ntl_targets=step.ntl_targets, temperature=1.0)
        model.load_state_dict(dict(engine.rollout_weights()))
    return rewards, logprob_gaps


def test_grpo_through_verl_integration_learns_a_trivially_learnable_reward(grpo_run):
    rewards, _ = grpo_run
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.7, rewards  # there is something to learn
    assert last > first + 0.25 and last > 0.8, rewards


def test_engine_old_log_prob_equals_the_rollout_models_log_prob_after_every_weight_copy(grpo_run):
    _, logprob_gaps = grpo_run
    assert max(logprob_gaps) < 1e-3, logprob_gaps
