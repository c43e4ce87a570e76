"""The NTL steps every NTL trainer runs, whatever verl's data path (``trainer.NTLTrainer``: TransferQueue batches
of the v1 trainers; ``ray_trainer.NTLRayPPOTrainer``: DataProto batches): configure the run, build the request from
the tokenizer, recompute the reward from padded tensors."""

from __future__ import annotations

import torch

from ntl_kernels import number_tokens

from .config import configure_ntl_run
from .request import NTLRequest
from .reward_step import RewardStepResult, ntl_reward_step


def per_sample(values, count: int) -> list:
    """A per-sample field (numpy object array, list) as a list; ``count`` Nones where the batch has no such field."""
    return [None] * count if values is None else list(values)


class NTLRunSteps:
    """The NTL steps any verl trainer runs, independent of its data path: configure (``configure_ntl_run``), build
    the request from the tokenizer, and recompute the reward from padded tensors. Needs ``self.tokenizer`` (for the
    request and the reward) and ``self.global_steps`` (the reward temperature's step)."""

    def configure_ntl(self, config) -> None:
        """Check the NTL settings and load the reward function with ``configure_ntl_run``, the function the start-up
        check runs in the driver: whatever is refused here was refused there, before Ray started."""
        run = configure_ntl_run(config)
        self.ntl = run.settings
        self.score_function = run.score_function
        self.reward_kwargs = run.reward_kwargs
        self.tau_schedule = run.tau_schedule

    def make_ntl_request(self, tokenizer) -> NTLRequest:
        """The request sent with the actor's batches: the tokenizer's number tokens and the loss settings."""
        numbers = number_tokens(tokenizer)
        return NTLRequest(
            digit_ids=tuple(numbers.ids.tolist()),
            number_texts=tuple(numbers.texts),
            loss_coef=float(self.ntl.loss_coef),
            loss_method=self.ntl.loss_method,
            fused_actor=self.ntl.fused_actor,
        )

    def configured_score(self, **kwargs) -> dict:
        """The configured ``compute_score`` with ``reward_kwargs`` (tau excluded: it follows ``ntl.tau``)."""
        return self.score_function(**{**self.reward_kwargs, **kwargs})

    def ntl_reward(self, *, responses: torch.Tensor, response_mask: torch.Tensor, attention_mask: torch.Tensor,
                   digit_log_probs, reward_models: list, data_sources: list, extra_infos: list) -> RewardStepResult:
        """``ntl_reward_step`` with this run's settings on padded ``[B, R]`` tensors: ``responses`` (int64),
        ``response_mask`` (1 on the generated tokens; 0 on tool output and padding), ``attention_mask`` (the
        response part of verl's: 1 on every response token), ``digit_log_probs`` (the actor's number-token rows:
        B tensors ``[m_b, K]`` or nested ``[B, m, K]``) and, per sample, verl's ``reward_model`` dict (its
        ``ground_truth``), ``data_source`` and ``extra_info``. The text scored is the masked-in tokens' (tool output
        left out, like its digits)."""
        count = responses.shape[0]
        return ntl_reward_step(
            responses=responses,
            response_mask=response_mask,
            attention_mask=attention_mask,
            digit_log_probs=digit_log_probs,
            solution_strs=[self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                           for ids, mask in zip(responses, response_mask, strict=True)],
            ground_truths=[(item or {}).get("ground_truth") for item in per_sample(reward_models, count)],
            data_sources=per_sample(data_sources, count),
            extra_infos=per_sample(extra_infos, count),
            compute_score=self.configured_score,
            digit_ids=torch.tensor(self.ntl_request.digit_ids),
            number_texts=self.ntl_request.number_texts,
            tau=self.tau_schedule.tau_at(max(int(getattr(self, "global_steps", 0) or 0), 0)),
            method=self.ntl.method,
            loss_targets=self.ntl.loss_targets,
            loss_place_weighting=self.ntl.loss_place_weighting,
        )
