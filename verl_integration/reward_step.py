"""The NTL reward, recomputed after old_log_prob from the actor's digit log-probs, and the NTL loss targets.

``ntl_reward_step`` works on plain padded tensors (no Ray, no TransferQueue), so the trainer, the tests and the CPU
demo share it. Per sample it builds ``ntl_info`` (ntl_reward's form (b)) from the digit log-probs of the tokens the
policy generated, calls the configured verl-style ``compute_score(data_source, solution_str, ground_truth,
extra_info, ntl_info=..., tau=...)``, and writes the score where verl's reward managers write it, on the response's
last token — what the advantage reads as ``rm_scores``.

Multi-turn / tool-calling rollouts: verl's agent loop masks tool output (observations) inside a response, so
``response_mask`` may have holes where ``attention_mask`` has none. Only the masked-in tokens (``response_mask`` = 1)
are scored and trained: ``ntl_info`` holds their digit log-probs and ids, in order, with the tool spans left out;
the loss targets sit at their real positions; the score goes on the last token of the response (tool output
included), as verl puts it there. A response scores what the same response with its tool spans removed scores,
provided ``solution_str`` is the text of the masked-in tokens (as the trainer decodes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntl_kernels import NUM_DIGITS, digit_targets
from ntl_reward import DIGIT_IDS_KEY, LOG_PROBS_KEY, RESPONSE_IDS_KEY, final_answer_targets

from .config import LOSS_TARGETS
from .digits import IGNORE_INDEX


@dataclass
class RewardStepResult:
    """``rm_scores [B, R]`` float32 (score on each response's last token, 0 elsewhere), ``ntl_targets [B, R]``
    int64 (digit targets of the loss at their response positions, -100 elsewhere), per-sample ``results`` dicts and
    ``metrics``."""

    rm_scores: torch.Tensor
    ntl_targets: torch.Tensor
    results: list[dict]
    metrics: dict[str, float]


def last_response_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64: position of the last 1 of each row of ``attention_mask [B, R]``, -1 for a row of zeros.

    This is where verl 0.9.1 writes a response's score: its reward managers at ``attention_mask[:, prompt_length:]
    .sum(-1) - 1`` (``RewardManagerBase.assemble_rm_scores``), its agent loop at the unpadded response's last token
    (``AgentLoopOutput.as_dict``): the same position for verl's right-padded responses, tool output included.
    """
    positions = torch.arange(-1, attention_mask.shape[-1], device=attention_mask.device)
    attended = torch.nn.functional.pad(attention_mask.bool(), (1, 0), value=True)  # column -1: "no token"
    return torch.where(attended, positions, -1).amax(-1)


def _check_shapes(responses, response_mask, attention_mask, digit_log_probs, per_sample: dict) -> None:
    if responses.dim() != 2 or responses.dtype.is_floating_point or responses.dtype == torch.bool:
        raise ValueError(f"responses must be [B, R] integer token ids, got {tuple(responses.shape)} {responses.dtype}")
    for name, mask in (("response_mask", response_mask), ("attention_mask", attention_mask)):
        if mask.shape != responses.shape:
            raise ValueError(f"{name} must be [B, R] like responses {tuple(responses.shape)}, got {tuple(mask.shape)}")
    if digit_log_probs.shape != (*responses.shape, NUM_DIGITS):
        raise ValueError(
            f"digit_log_probs must be [B, R, {NUM_DIGITS}] = {(*responses.shape, NUM_DIGITS)}, "
            f"got {tuple(digit_log_probs.shape)}"
        )
    for name, values in per_sample.items():
        if len(values) != responses.shape[0]:
            raise ValueError(f"{name} must have one entry per response ({responses.shape[0]}), got {len(values)}")


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
    attention_mask: torch.Tensor | None = None,
) -> RewardStepResult:
    """NTL rewards and loss targets of a batch of B responses.

    Args:
        responses: ``[B, R]`` int64 response token ids (padded).
        response_mask: ``[B, R]`` 0/1, 1 on the tokens the policy generated: the tokens scored and trained. May have
            holes (tool output of multi-turn rollouts, 0) anywhere, and may be all zeros.
        digit_log_probs: ``[B, R, 10]`` float, row k = the actor's digit distribution that generated response
            token k (the engine's output cut with ``response_from_nested`` / ``no_padding_2_padding``).
        solution_strs, ground_truths, data_sources, extra_infos: per sample, as verl passes them to a reward;
            ``solution_strs[b]`` is the text of the masked-in tokens of response b (tool output left out), so that
            its digits are the digit tokens scored.
        compute_score: verl-style reward function accepting ``ntl_info=`` and ``tau=`` (ntl_reward's).
        digit_ids: ``[10]`` token ids of '0'..'9'.
        tau: reward temperature of this step.
        method: NTL method passed to ``compute_score`` (None: the function's default).
        loss_targets: ``"correct_generated"``: every generated digit of a response with ``exact_match = 1`` is its
            own target; ``"final_answer"``: the final answer's digits get the ground-truth digit at their place.
        attention_mask: ``[B, R]`` 0/1, the response part of verl's attention mask: 1 on every token of the response
            (tool output included), 0 on padding; must cover ``response_mask``. The score goes on its last 1
            (``last_response_token``). None: ``response_mask`` (a response without tool output).
    """
    if loss_targets not in LOSS_TARGETS:
        raise ValueError(f"loss_targets must be one of {LOSS_TARGETS}, got {loss_targets!r}")
    attention_mask = response_mask if attention_mask is None else attention_mask
    _check_shapes(responses, response_mask, attention_mask, digit_log_probs, {
        "solution_strs": solution_strs, "ground_truths": ground_truths, "data_sources": data_sources,
        "extra_infos": extra_infos,
    })
    scored = response_mask.bool()
    if (scored & ~attention_mask.bool()).any():
        raise ValueError("response_mask has 1s where attention_mask is 0: every scored token must be a response token")
    batch, width = responses.shape
    generated = digit_targets(responses, digit_ids).masked_fill(~scored, IGNORE_INDEX)
    score_positions = last_response_token(attention_mask).tolist()
    rm_scores = torch.zeros(batch, width, dtype=torch.float32)
    ntl_targets = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    extra = {} if method is None else {"method": method}
    results = []
    for b in range(batch):
        positions = scored[b].nonzero().squeeze(-1)
        ntl_info = {
            LOG_PROBS_KEY: digit_log_probs[b, positions].float().cpu(),
            RESPONSE_IDS_KEY: responses[b, positions].cpu(),
            DIGIT_IDS_KEY: digit_ids.cpu(),
        }
        result = compute_score(
            data_source=data_sources[b], solution_str=solution_strs[b], ground_truth=ground_truths[b],
            extra_info=extra_infos[b], ntl_info=ntl_info, tau=tau, **extra,
        )
        results.append(result)
        if score_positions[b] >= 0:
            rm_scores[b, score_positions[b]] = float(result["score"])
        if loss_targets == "correct_generated":
            if result.get("exact_match"):
                ntl_targets[b] = generated[b]
        else:
            digit_positions = (generated[b] != IGNORE_INDEX).nonzero().squeeze(-1).tolist()
            for position, target in final_answer_targets(solution_strs[b], digit_positions, ground_truths[b]).items():
                ntl_targets[b, position] = target
    losses = [r["ntl_loss"] for r in results if r.get("ntl_loss") is not None]
    metrics = {
        "reward/ntl_score": sum(float(r["score"]) for r in results) / batch,
        "reward/exact_match": sum(float(r.get("exact_match", 0)) for r in results) / batch,
        "reward/ntl_coverage": len(losses) / batch,
        # samples whose digit log-probs were NaN/inf (scored 0): a numerical fault in the actor, never a reward
        "reward/ntl_non_finite": sum(float(r.get("ntl_non_finite", 0)) for r in results) / batch,
    }
    if losses:
        metrics["reward/ntl_loss"] = sum(losses) / len(losses)
    return RewardStepResult(rm_scores, ntl_targets, results, metrics)
