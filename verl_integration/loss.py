"""verl's actor loss plus ``ntl_coef * NTL``, the NTL term aggregated exactly like verl's other loss terms.

verl's worker builds its actor loss as ``functools.partial(ppo_loss, config=actor_config)``. ``ppo_loss`` fills
``config.global_batch_info`` (dp size, global token count, global batch size, scale factor) from the micro-batch and
aggregates every term with ``agg_loss(..., config.loss_agg_mode, **config.global_batch_info)``, so that summing the
micro-batch losses gives the mean over the global mini-batch. The NTL term is aggregated the same way:

    ntl_term = agg_loss(ntl[B, R], mask = (has a target), config.loss_agg_mode, **config.global_batch_info)
    loss     = ppo_loss + ntl_coef * ntl_term          (ntl_coef = 0: ppo_loss's tensor itself, untouched)

With the default ``token-mean`` this is ``sum of NTL over target tokens / global response tokens * dp_size``.
Metrics: ``actor/ntl_loss`` (the term, aggregated like ``actor/pg_loss``) and ``actor/ntl_digit_acc`` (fraction
of target number tokens whose most likely number token is the target, mean over the micro-batches of all
data-parallel ranks that have targets).
"""

from __future__ import annotations

import functools

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from .digits import IGNORE_INDEX, response_number_tokens
from .request import NTL_TARGETS_KEY, NTLRequest


def actor_config_of(base_loss) -> object:
    """The ``ActorConfig`` bound into verl's actor loss (``partial(ppo_loss, config=...)``)."""
    config = base_loss.keywords.get("config") if isinstance(base_loss, functools.partial) else None
    if config is None or not hasattr(config, "global_batch_info"):
        raise TypeError(
            "the NTL loss wraps verl's actor loss built as functools.partial(ppo_loss, config=actor_config); "
            f"got {base_loss!r}"
        )
    return config


def response_targets(data: TensorDict, width: int) -> torch.Tensor:
    """``data['ntl_targets']`` as a padded ``[B, width]`` int64 tensor (-100 beyond each response)."""
    targets = data[NTL_TARGETS_KEY]
    if targets.is_nested:
        return torch.nested.to_padded_tensor(targets, IGNORE_INDEX, output_size=(targets.shape[0], width)).long()
    return targets.long()


class NTLActorLoss:
    """``base_loss`` (verl's ``partial(ppo_loss, config=...)``) plus ``request.loss_coef`` times the NTL term.

    Called like verl's loss: ``(model_output, data, dp_group) -> (loss, metrics)``. ``model_output`` must hold the
    engine's ``ntl`` (nested ``[B, prompt + response]``) and ``digit_log_probs`` (nested ``[B, m, K]``, the response's
    number-token rows) and ``data`` the ``ntl_targets``.
    """

    def __init__(self, base_loss, request: NTLRequest):
        self.base_loss = base_loss
        self.config = actor_config_of(base_loss)
        self.request = request

    def __call__(self, model_output, data: TensorDict, dp_group=None):
        loss, metrics = self.base_loss(model_output=model_output, data=data, dp_group=dp_group)
        ntl = no_padding_2_padding(model_output["ntl"], data)  # [B, R], row of response token k
        targets = response_targets(data, ntl.shape[1])
        has_target = targets != IGNORE_INDEX
        # ppo_loss has just filled global_batch_info for this micro-batch
        ntl_term = agg_loss(
            loss_mat=ntl, loss_mask=has_target, loss_agg_mode=self.config.loss_agg_mode,
            **self.config.global_batch_info,
        )
        if self.request.loss_coef != 0.0:
            loss = loss + self.request.loss_coef * ntl_term
        aggregation = metrics["actor/pg_loss"].aggregation if "actor/pg_loss" in metrics else AggregationType.MEAN
        metrics["actor/ntl_loss"] = Metric(value=ntl_term.detach(), aggregation=aggregation)
        num_targets = int(has_target.sum())
        if num_targets:
            # the number rows are the response's number tokens in order, and only number tokens have targets
            is_number = response_number_tokens(data, torch.tensor(self.request.digit_ids), targets.shape[1])
            predicted = torch.full_like(targets, IGNORE_INDEX)
            predicted[is_number.to(targets.device)] = model_output["digit_log_probs"].values().argmax(-1).to(
                targets.device)
            correct = (predicted == targets) & has_target
            # a plain number, not a Metric: verl concatenates those over data-parallel ranks, whereas Metrics must
            # have as many values on every rank, and a rank's micro-batches may have no targets
            metrics["actor/ntl_digit_acc"] = correct.sum().item() / num_targets
        return loss, metrics
