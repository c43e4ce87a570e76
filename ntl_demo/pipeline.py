"""The one place the demo calls verl and ``verl_integration``: the NTL engine, its loss, and the NTL reward step.

Per RL step the demo's loop (``train.py``) does what verl's v1 trainer does with ``verl_integration``'s trainer
mode, minus Ray and vLLM (rollout is Hugging Face ``generate``):

    rollout -> ``PolicyEngine.old_log_probs`` (the NTL engine's forward: log-probs + digit log-probs)
            -> ``reward_step`` (``verl_integration.reward_step.ntl_reward_step``: NTL reward from those digit
               log-probs, written on the last response token, plus the NTL loss targets)
            -> ``grpo_advantages`` (verl's GRPO outcome advantage)
            -> ``PolicyEngine.update`` (verl's ``ppo_loss`` + ntl_coef * NTL, one optimizer step)
            -> ``PolicyEngine.rollout_weights`` (the updated weights, copied into the rollout model)

Tensors here are padded ``[B, R]`` response tensors (R = longest response of the batch); the engine works on
verl's nested (no-padding) layout, built by ``verl_integration.inprocess.make_batch``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch

def _reward_function(mode: str, answer_credit: str = "none"):
    """verl-style ``compute_score`` of a demo mode: ntl_reward Final (with its ``answer_credit``) / All, or exact
    match alone (``em``)."""
    if mode == "final":
        from ntl_reward.final_answer import compute_score

        return functools.partial(compute_score, answer_credit=answer_credit)
    if answer_credit != "none":
        raise ValueError(f"answer_credit={answer_credit!r} is an option of the final mode, not of {mode!r}")
    from ntl_reward.all_tokens import compute_score

    if mode == "all":
        return compute_score

    def exact_match_score(*, ntl_info=None, **kwargs):
        # All-tokens without NTL is exactly exact match (ntl_reward: "EM when no NTL is available").
        return compute_score(ntl_info=None, **kwargs)

    return exact_match_score


class PolicyEngine:
    """verl_integration's NTL engine (an ``FSDPEngineWithLMHead`` subclass) run in this process.

    Args:
        model_dir: Hugging Face model directory (weights + tokenizer) the engine loads.
        numbers: the tokenizer's number tokens (``ntl_kernels.number_tokens``: the 10 digits, or Llama-3's 1,110).
        lr: actor learning rate (AdamW, constant).
        ntl_coef: weight of the NTL term added to verl's ``ppo_loss`` (0: plain verl loss).
        ntl_method: per-token NTL method of that term ("nll", "was" or "mse").
        max_token_len: tokens per micro-batch (verl's dynamic batch size); bounds the [tokens, vocab] logits.
        device: "cpu" registers verl's CPU platform (``verl_integration.inprocess``); "cuda" uses verl's own.
        adam_eps: AdamW's epsilon (verl's ``optim.override_optimizer_config.eps``).
        freeze_embeddings: train everything but the token embedding and the LM head (the same matrix when tied).
    """

    def __init__(self, model_dir: str, *, numbers, lr: float, ntl_coef: float, ntl_method: str,
                 max_token_len: int, total_steps: int, device: str, adam_eps: float = 1e-8,
                 freeze_embeddings: bool = False):
        from verl_integration.inprocess import actor_loss, build_engine, engine_settings
        from verl_integration.request import NTLRequest

        self.engine = build_engine(
            str(model_dir), device=device, use_remove_padding=True, use_dynamic_bsz=True, max_token_len=max_token_len,
            lr=lr, total_training_steps=total_steps,
        )
        self.settings = engine_settings(self.engine)
        for group in self.engine.optimizer.param_groups:
            group["eps"] = adam_eps
        if freeze_embeddings:
            frozen = [p for name, p in self.engine.module.named_parameters()
                      if name.endswith(("embed_tokens.weight", "lm_head.weight"))]
            for parameter in frozen:
                parameter.requires_grad_(False)
            for group in self.engine.optimizer.param_groups:
                group["params"] = [p for p in group["params"] if all(p is not f for f in frozen)]
        self.request = NTLRequest(digit_ids=tuple(numbers.ids.tolist()), number_texts=tuple(numbers.texts),
                                  loss_coef=ntl_coef, loss_method=ntl_method)
        self.loss_function = actor_loss(clip_ratio=0.2, entropy_coeff=0.0, loss_agg_mode="token-mean")

    def _batch(self, prompts, responses, temperature: float, **fields):
        from verl_integration.inprocess import make_batch

        batch = make_batch(prompts, responses, temperature=temperature, settings=self.settings, **fields)
        return self.request.attach(batch)

    def old_log_probs(self, prompts: Sequence[list[int]], responses: Sequence[list[int]], temperature: float):
        """The policy's ``log_probs [B, R]`` of the sampled tokens (row k: response token k, padding 0) and its
        number-token log-probs, nested ``[B, m, K]`` (log-softmax over the K number-token logits at temperature
        ``temperature``), at the rows of each response's number tokens only, as the NTL engine outputs them."""
        from verl.workers.utils.padding import no_padding_2_padding

        batch = self._batch(prompts, responses, temperature)
        with self.engine.eval_mode():
            output = self.engine.infer_batch(batch)
        model_output = output["model_output"]
        log_probs = no_padding_2_padding(model_output["log_probs"], batch)
        return log_probs.float(), model_output["digit_log_probs"].float()

    def update(self, prompts, responses, *, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               ntl_targets: torch.Tensor, temperature: float) -> dict[str, float]:
        """One optimizer step on the whole batch (one mini-batch, one epoch) with verl's actor loss plus NTL.

        ``old_log_probs``, ``advantages`` ``[B, R]`` float and ``ntl_targets`` ``[B, R]`` int64 (-100 = no target)
        are padded response tensors. Returns verl's metrics reduced to floats (``actor/pg_loss``,
        ``actor/ntl_loss``, ``actor/ntl_digit_acc``, ``grad_norm``, ...).
        """
        from verl.utils import tensordict_utils as tu

        batch = self._batch(prompts, responses, temperature, old_log_probs=old_log_probs.float(),
                            advantages=advantages.float(), ntl_targets=ntl_targets.long())
        tu.assign_non_tensor(batch, global_batch_size=len(prompts))
        with self.engine.train_mode():
            output = self.engine.train_batch(batch, loss_function=self.loss_function)
        return {name: _as_float(value) for name, value in output["metrics"].items()}

    def rollout_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The engine's current weights as (Hugging Face name, full tensor), as verl syncs them to its rollout."""
        params, _ = self.engine.get_per_tensor_param()
        return params


def _as_float(value) -> float:
    """A verl metric (a Metric, a tensor, or a list of them per micro-batch) as one float (mean over the list)."""
    from verl.utils.metric import Metric

    if isinstance(value, list):
        if value and isinstance(value[0], Metric):
            return _as_float(Metric.aggregate_dp(value))
        return float(np.mean([_as_float(v) for v in value])) if value else float("nan")
    if isinstance(value, Metric):
        return float(value.aggregate())
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean())
    return float(value)


def reward_step(mode: str, *, responses: torch.Tensor, response_mask: torch.Tensor,
                number_log_probs: torch.Tensor, texts: Sequence[str], ground_truths: Sequence[str],
                data_sources: Sequence[str], numbers, tau: float, ntl_targets: str,
                answer_credit: str = "none"):
    """verl_integration's reward step after old_log_prob: rewards of ``mode`` and the NTL loss targets.

    Returns its ``RewardStepResult``: ``rm_scores [B, R]`` (score on the last response token), ``ntl_targets
    [B, R]``, per-sample ``results`` (ntl_reward dicts: score, exact_match, ntl_loss, ...) and ``metrics``.
    """
    from verl_integration.reward_step import ntl_reward_step

    return ntl_reward_step(
        responses=responses, response_mask=response_mask, digit_log_probs=number_log_probs,
        solution_strs=list(texts), ground_truths=list(ground_truths), data_sources=list(data_sources),
        extra_infos=[{} for _ in texts], compute_score=_reward_function(mode, answer_credit), digit_ids=numbers.ids,
        number_texts=tuple(numbers.texts), tau=tau, loss_targets=ntl_targets,
    )


def grpo_advantages(rm_scores: torch.Tensor, response_mask: torch.Tensor, groups: Sequence[int], *,
                    norm_adv_by_std: bool = True) -> torch.Tensor:
    """verl's GRPO outcome advantage: each response's score minus its group's mean, over the group's std
    (``norm_adv_by_std``, verl's ``algorithm.norm_adv_by_std_in_grpo``; False: not divided, as in Dr. GRPO), spread
    over the response's tokens. ``rm_scores``/``response_mask`` ``[B, R]``; returns ``[B, R]`` float32.

    With the std division a group's advantages do not change when its rewards are scaled: a group with one
    correct response gets the same advantages whether that response scores 1 (exact match) or ``exp(-L/tau)``
    (All tokens), so the two modes differ only in groups with several correct responses. Without it the
    advantage is proportional to the reward."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=rm_scores.float(), response_mask=response_mask.float(), index=np.asarray(groups),
        norm_adv_by_std_in_grpo=norm_adv_by_std,
    )
    return advantages.float()
