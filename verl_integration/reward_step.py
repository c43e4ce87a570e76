"""The NTL reward, recomputed after old_log_prob from the actor's digit log-probs, and the NTL loss targets.

``ntl_reward_step`` works on plain padded tensors (no Ray, no TransferQueue), so the trainer, the tests and the CPU
demo share it. Per sample it builds ``ntl_info`` (ntl_reward's form (b)) from the response's digit log-probs, calls
the configured verl-style ``compute_score(data_source, solution_str, ground_truth, extra_info, ntl_info=..., tau=...)``,
and writes the score on the last valid response token — where verl's reward managers put it, and what the advantage
reads as ``rm_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntl_kernels import digit_targets
from ntl_reward import DIGIT_IDS_KEY, LOG_PROBS_KEY, MASK_KEY, RESPONSE_IDS_KEY, final_answer_targets

from .digits import IGNORE_INDEX


@dataclass
class RewardStepResult:
    """``rm_scores [B, R]`` float32 (score on each response's last valid token, 0 elsewhere), ``ntl_targets
    [B, R]`` int64 (digit targets of the loss, -100 elsewhere), per-sample ``results`` dicts and ``metrics``."""

    rm_scores: torch.Tensor
    ntl_targets: torch.Tensor
    results: list[dict]
    metrics: dict[str, float]


def ntl_reward_step(
    *,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    digit_log_probs: torch.Tensor,
    solution_strs: list[str],
    ground_truths: list,
    data_sources: list,
    extra_infos: list,
    compute_score,
    digit_ids: torch.Tensor,
    tau: float,
    method: str | None = None,
    loss_targets: str = "correct_generated",
) -> RewardStepResult:
    """NTL rewards and loss targets of a batch of B responses.

    Args:
        responses: ``[B, R]`` int64 response token ids (padded).
        response_mask: ``[B, R]`` 0/1, 1 on each response's valid tokens (a prefix of the row).
        digit_log_probs: ``[B, R, 10]`` float, row k = the actor's digit distribution that generated response
            token k (the engine's output cut with ``response_from_nested`` / ``no_padding_2_padding``).
        solution_strs, ground_truths, data_sources, extra_infos: per sample, as verl passes them to a reward.
        compute_score: verl-style reward function accepting ``ntl_info=`` and ``tau=`` (ntl_reward's).
        digit_ids: ``[10]`` token ids of '0'..'9'.
        tau: reward temperature of this step.
        method: NTL method passed to ``compute_score`` (None: the function's default).
        loss_targets: ``"correct_generated"``: every generated digit of a response with ``exact_match = 1`` is its
            own target; ``"final_answer"``: the final answer's digits get the ground-truth digit at their place.
    """
    batch, width = responses.shape
    mask = response_mask.bool()
    lengths = mask.sum(-1).tolist()
    generated = digit_targets(responses, digit_ids).masked_fill(~mask, IGNORE_INDEX)
    rm_scores = torch.zeros(batch, width, dtype=torch.float32)
    ntl_targets = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    extra = {} if method is None else {"method": method}
    results = []
    for b in range(batch):
        length = lengths[b]
        ntl_info = {
            LOG_PROBS_KEY: digit_log_probs[b, :length].float().cpu(),
            RESPONSE_IDS_KEY: responses[b, :length].cpu(),
            DIGIT_IDS_KEY: digit_ids.cpu(),
            MASK_KEY: torch.ones(length, dtype=torch.bool),
        }
        result = compute_score(
            data_source=data_sources[b], solution_str=solution_strs[b], ground_truth=ground_truths[b],
            extra_info=extra_infos[b], ntl_info=ntl_info, tau=tau, **extra,
        )
        results.append(result)
        if length:
            rm_scores[b, length - 1] = float(result["score"])
        if loss_targets == "correct_generated":
            if result.get("exact_match"):
                ntl_targets[b] = generated[b]
        else:
            positions = (generated[b] != IGNORE_INDEX).nonzero().squeeze(-1).tolist()
            for position, target in final_answer_targets(solution_strs[b], positions, ground_truths[b]).items():
                ntl_targets[b, position] = target
    losses = [r["ntl_loss"] for r in results if r.get("ntl_loss") is not None]
    metrics = {
        "reward/ntl_score": sum(float(r["score"]) for r in results) / batch,
        "reward/exact_match": sum(float(r.get("exact_match", 0)) for r in results) / batch,
        "reward/ntl_coverage": len(losses) / batch,
    }
    if losses:
        metrics["reward/ntl_loss"] = sum(losses) / len(losses)
    return RewardStepResult(rm_scores, ntl_targets, results, metrics)
