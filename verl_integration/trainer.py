"""verl's v1 synchronous PPO trainer with the NTL reward recomputed after old_log_prob (trainer mode ``ntl``).

verl scores a rollout in the agent loop, before the actor has looked at it; the digit log-probs NTL needs only exist
after the actor's ``old_log_prob`` pass. So this trainer, per step:

1. asks the actor's ``old_log_prob`` pass for the digit log-probs too (``NTLRequest`` in ``extra_info``);
2. right after it, runs ``reward_step.ntl_reward_step`` on them and writes the NTL scores over the rollout's
   ``rm_scores`` (what ``_compute_advantage`` reads) and the loss targets as ``ntl_targets``;
3. asks the actor update for the NTL loss term (``ntl.loss_coef``) — the engine adds it to verl's ``ppo_loss``.

Everything else is verl's ``PPOTrainerSync``. Selected with ``trainer.v1.trainer_mode=ntl``; the mode name only picks
this class: the base trainer sees ``"sync"`` and runs verl's synchronous schedule (``trainer.v1.sync`` options).
"""

from __future__ import annotations

import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.utils.padding import response_to_nested

from ntl_kernels import number_tokens

from .config import TRAINER_MODE, configure_ntl_run
from .request import NTL_REQUEST_KEY, NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, RESPONSE_ROWS_KEY, NTLRequest
from .reward_step import ntl_reward_step

SCHEDULE_MODE = "sync"


def as_list(values) -> list:
    """A TransferQueue non-tensor field (NonTensorStack, numpy array, list) as a python list."""
    if values is None:
        return []
    return values.tolist() if hasattr(values, "tolist") else list(values)


@register_trainer(TRAINER_MODE)
class NTLPPOTrainer(PPOTrainerSync):
    """``PPOTrainerSync`` whose rewards are NTL rewards computed from the actor's own digit distributions."""

    def __init__(self, config):
        self.configure_ntl(config)
        super().__init__(config)

    def configure_ntl(self, config) -> None:
        """Check the NTL settings and load the reward function with ``configure_ntl_run``, the function the start-up
        check runs in the driver: whatever is refused here was refused there, before Ray started."""
        run = configure_ntl_run(config)
        self.ntl = run.settings
        self.score_function = run.score_function
        self.reward_kwargs = run.reward_kwargs
        self.tau_schedule = run.tau_schedule

    @property
    def trainer_mode(self) -> str:
        """The schedule the base trainer runs: verl's synchronous one (the registered name only selects the class)."""
        return SCHEDULE_MODE

    @trainer_mode.setter
    def trainer_mode(self, registered_name: str) -> None:
        if registered_name != TRAINER_MODE:
            raise ValueError(f"NTLPPOTrainer runs as trainer.v1.trainer_mode={TRAINER_MODE}, got {registered_name!r}")

    def _init_tokenizer(self):
        super()._init_tokenizer()
        self.ntl_request = self.make_ntl_request(self.tokenizer)

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

    def _compute_old_log_prob(self, batch, metrics: dict):
        batch = self._with_ntl_settings(super()._compute_old_log_prob, batch, metrics, request=True)
        return self._apply_ntl_reward(batch, metrics)

    def _compute_ref_log_prob(self, batch, metrics: dict):
        return self._with_ntl_settings(super()._compute_ref_log_prob, batch, metrics, request=False)

    def _update_actor(self, batch, metrics: dict):
        return self._with_ntl_settings(super()._update_actor, batch, metrics, request=True)

    def _with_ntl_settings(self, stage, batch, metrics: dict, *, request: bool):
        """Run a worker stage with ``ntl.response_rows_only`` and, for the actor's stages (``request``), the NTL
        request in ``extra_info``; later stages (critic, ...) see neither."""
        settings = {RESPONSE_ROWS_KEY: self.ntl.response_rows_only}
        if request:
            settings[NTL_REQUEST_KEY] = self.ntl_request.as_dict()
        batch.extra_info.update(settings)
        try:
            result = stage(batch, metrics=metrics)
        finally:
            for key in settings:
                batch.extra_info.pop(key, None)
        for key in settings:
            if result.extra_info:
                result.extra_info.pop(key, None)
        return result

    def _apply_ntl_reward(self, batch, metrics: dict):
        """Recompute each sample's score from the actor's number-token log-probs; replace ``rm_scores``; add
        targets."""
        fields = ["responses", "response_mask", "digit_log_probs", "reward_model", "data_source", "extra_info"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        count = len(batch)
        response_mask = data["response_mask"]  # nested: each row as long as its response, 0 on tool output
        responses = data["responses"].to_padded_tensor(padding=self.tokenizer.pad_token_id)
        padded_mask = response_mask.to_padded_tensor(padding=0)
        # the response part of verl's attention mask (what its reward managers place the score by)
        attention_mask = self._lengths_to_mask(response_mask.offsets().diff(), responses.shape[1])
        reward_models = as_list(data.get("reward_model", None)) or [None] * count
        result = ntl_reward_step(
            responses=responses,
            response_mask=padded_mask,
            attention_mask=attention_mask,
            digit_log_probs=data["digit_log_probs"],  # nested [B, m, K]: the responses' number-token rows
            solution_strs=[  # the text of the scored tokens: tool output left out, like its digits
                self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                for ids, mask in zip(responses, padded_mask, strict=True)
            ],
            ground_truths=[(item or {}).get("ground_truth") for item in reward_models],
            data_sources=as_list(data.get("data_source", None)) or [None] * count,
            extra_infos=as_list(data.get("extra_info", None)) or [None] * count,
            compute_score=self.configured_score,
            digit_ids=torch.tensor(self.ntl_request.digit_ids),
            number_texts=self.ntl_request.number_texts,
            tau=self.tau_schedule.tau_at(max(int(getattr(self, "global_steps", 0) or 0), 0)),
            method=self.ntl.method,
            loss_targets=self.ntl.loss_targets,
            loss_place_weighting=self.ntl.loss_place_weighting,
        )
        written = {"rm_scores": result.rm_scores, NTL_TARGETS_KEY: result.ntl_targets}
        if result.ntl_weights is not None:
            written[NTL_WEIGHTS_KEY] = result.ntl_weights
        write_back = TensorDict({key: response_to_nested(value, response_mask) for key, value in written.items()},
                                batch_size=count)
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=write_back)
        metrics.update(result.metrics)
        return batch

    def configured_score(self, **kwargs) -> dict:
        """The configured ``compute_score`` with ``reward_kwargs`` (tau excluded: it follows ``ntl.tau``)."""
        return self.score_function(**{**self.reward_kwargs, **kwargs})
