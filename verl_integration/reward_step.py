"""The NTL reward, recomputed after old_log_prob from the actor's digit log-probs, and the NTL loss targets.

``ntl_reward_step`` works on plain padded tensors (no Ray, no TransferQueue), so the trainer, the tests and the CPU
demo share it. Per sample it builds ``ntl_info`` (ntl_reward's form (b)) from the number-token log-probs of the number
tokens the policy generated (the only tokens either reward mode scores), calls the configured verl-style ``compute_score(data_source, solution_str, ground_truth,
extra_info, ntl_info=..., tau=...)``, and writes the score where verl's reward managers write it, on the response's
last token — what the advantage reads as ``rm_scores``.

Multi-turn / tool-calling rollouts: verl's agent loop masks tool output (observations) inside a response, so
``response_mask`` may have holes where ``attention_mask`` has none. Only the masked-in tokens (``response_mask`` = 1)
are scored and trained: ``ntl_info`` holds their number-token log-probs and ids, in order, with the tool spans left
out;
the loss targets sit at their real positions; the score goes on the last token of the response (tool output
included), as verl puts it there. A response scores what the same response with its tool spans removed scores,
provided ``solution_str`` is the text of the masked-in tokens (as the trainer decodes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntl_kernels import digit_targets
from ntl_reward import (
    DIGIT_IDS_KEY,
    LOG_PROBS_KEY,
    NUMBER_TEXTS_KEY,
    RESPONSE_IDS_KEY,
    check_place_weighting,
    final_answer_places,
    final_answer_targets,
    number_token_places,
    place_weights,
)
from ntl_reward.scoring import ANSWER_NOT_A_NUMBER

from .config import LOSS_TARGETS
from .digits import IGNORE_INDEX
from .request import DIGIT_TEXTS


@dataclass
class RewardStepResult:
    """``rm_scores [B, R]`` float32 (score on each response's last token, 0 elsewhere), ``ntl_targets [B, R]``
    int64 (slot targets of the loss at their response positions, -100 elsewhere), per-sample ``results`` dicts,
    ``metrics`` and ``ntl_weights [B, R]`` float32 (each target's place weight, 1 elsewhere; None when the loss is
    not place-weighted)."""

    rm_scores: torch.Tensor
    ntl_targets: torch.Tensor
    results: list[dict]
    metrics: dict[str, float]
    ntl_weights: torch.Tensor | None = None


def last_response_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64: position of the last 1 of each row of ``attention_mask [B, R]``, -1 for a row of zeros.

    This is where verl 0.9.1 writes a response's score: its reward managers at ``attention_mask[:, prompt_length:]
    .sum(-1) - 1`` (``RewardManagerBase.assemble_rm_scores``), its agent loop at the unpadded response's last token
    (``AgentLoopOutput.as_dict``): the same position for verl's right-padded responses, tool output included.
    """
    positions = torch.arange(-1, attention_mask.shape[-1], device=attention_mask.device)
    attended = torch.nn.functional.pad(attention_mask.bool(), (1, 0), value=True)  # column -1: "no token"
    return torch.where(attended, positions, -1).amax(-1)


def number_rows_of(digit_log_probs, responses: torch.Tensor, is_number: torch.Tensor, count: int) -> list:
    """Per sample, the ``[m_b, K]`` log-prob rows of its response's number tokens (``is_number [B, R]``), in order,
    from either form ``ntl_reward_step`` takes; ValueError naming ``digit_log_probs`` when the shapes disagree."""
    expected = f"[B, R, {count}] = {(*responses.shape, count)} or B tensors [m_b, {count}] (m_b = number tokens)"
    if isinstance(digit_log_probs, torch.Tensor) and not digit_log_probs.is_nested:
        if digit_log_probs.shape != (*responses.shape, count):
            raise ValueError(f"digit_log_probs must be {expected}, got {tuple(digit_log_probs.shape)}")
        return [rows[numbers] for rows, numbers in zip(digit_log_probs, is_number, strict=True)]
    rows = list(digit_log_probs.unbind() if isinstance(digit_log_probs, torch.Tensor) else digit_log_probs)
    counts = is_number.sum(-1).tolist()
    if len(rows) != len(counts) or any(r.shape != (m, count) for r, m in zip(rows, counts)):
        raise ValueError(f"digit_log_probs must be {expected}, got {[tuple(r.shape) for r in rows][:8]}")
    return rows


def _check_shapes(responses, response_mask, attention_mask, per_sample: dict) -> None:
    if responses.dim() != 2 or responses.dtype.is_floating_point or responses.dtype == torch.bool:
        raise ValueError(f"responses must be [B, R] integer token ids, got {tuple(responses.shape)} {responses.dtype}")
    for name, mask in (("response_mask", response_mask), ("attention_mask", attention_mask)):
        if mask.shape != responses.shape:
            raise ValueError(f"{name} must be [B, R] like responses {tuple(responses.shape)}, got {tuple(mask.shape)}")
    for name, values in per_sample.items():
        if len(values) != responses.shape[0]:
            raise ValueError(f"{name} must have one entry per response ({responses.shape[0]}), got {len(values)}")


def ntl_reward_step(
    *,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    digit_log_probs,
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
    number_texts: tuple[str, ...] | None = None,
    loss_place_weighting: str = "none",
) -> RewardStepResult:
    """NTL rewards and loss targets of a batch of B responses.

    Args:
        responses: ``[B, R]`` int64 response token ids (padded).
        response_mask: ``[B, R]`` 0/1, 1 on the tokens the policy generated: the tokens scored and trained. May have
            holes (tool output of multi-turn rollouts, 0) anywhere, and may be all zeros.
        digit_log_probs: the actor's number-token distributions (float, K = ``len(digit_ids)`` columns), either
            ``[B, R, K]`` (row k: the distribution that generated response token k) or, as the engine outputs them,
            per sample the ``[m_b, K]`` rows of the response's number tokens only, in order (a list, or a nested
            tensor): the tokens of ``responses[b]`` in ``digit_ids`` where ``attention_mask`` is 1.
        solution_strs, ground_truths, data_sources, extra_infos: per sample, as verl passes them to a reward;
            ``solution_strs[b]`` is the text of the masked-in tokens of response b (tool output left out), so that
            its digits are the digit tokens scored.
        compute_score: verl-style reward function accepting ``ntl_info=`` and ``tau=`` (ntl_reward's).
        digit_ids: ``[K]`` token ids of the number-token set ('0'..'9' in digit order, or see
            ``ntl_kernels.number_tokens``).
        tau: reward temperature of this step.
        method: NTL method passed to ``compute_score`` (None: the function's default).
        loss_targets: ``"correct_generated"``: every generated number token of a response with ``exact_match = 1``
            is its own target; ``"final_answer"``: the final answer's number tokens get the ground truth's digits at
            their places.
        attention_mask: ``[B, R]`` 0/1, the response part of verl's attention mask: 1 on every token of the response
            (tool output included), 0 on padding; must cover ``response_mask``. The score goes on its last 1
            (``last_response_token``). None: ``response_mask`` (a response without tool output).
        number_texts: the K digit strings of ``digit_ids`` (None: '0'..'9').
        loss_place_weighting: ``ntl_reward.place_value``'s weighting of the loss targets ("none": no
            ``ntl_weights``; "place": 1 + the place of the token's most significant digit).
    """
    if loss_targets not in LOSS_TARGETS:
        raise ValueError(f"loss_targets must be one of {LOSS_TARGETS}, got {loss_targets!r}")
    attention_mask = response_mask if attention_mask is None else attention_mask
    _check_shapes(responses, response_mask, attention_mask, {
        "solution_strs": solution_strs, "ground_truths": ground_truths, "data_sources": data_sources,
        "extra_infos": extra_infos,
    })
    scored = response_mask.bool()
    if (scored & ~attention_mask.bool()).any():
        raise ValueError("response_mask has 1s where attention_mask is 0: every scored token must be a response token")
    batch, width = responses.shape
    is_number = torch.isin(responses, digit_ids.to(responses.device)) & attention_mask.bool()
    number_log_probs = number_rows_of(digit_log_probs, responses, is_number, len(digit_ids))
    generated = digit_targets(responses, digit_ids).masked_fill(~scored, IGNORE_INDEX)
    number_texts = list(DIGIT_TEXTS if number_texts is None else number_texts)
    widths = torch.tensor([len(text) for text in number_texts])
    check_place_weighting(loss_place_weighting, "loss_place_weighting")
    target_places = torch.zeros(batch, width, dtype=torch.long) if loss_place_weighting != "none" else None
    score_positions = last_response_token(attention_mask).tolist()
    rm_scores = torch.zeros(batch, width, dtype=torch.float32)
    ntl_targets = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    extra = {} if method is None else {"method": method}
    results = []
    for b in range(batch):
        numbers = is_number[b].nonzero().squeeze(-1)
        generated_numbers = scored[b, numbers]  # tool output left out
        ntl_info = {
            LOG_PROBS_KEY: number_log_probs[b][generated_numbers.to(number_log_probs[b].device)].float().cpu(),
            RESPONSE_IDS_KEY: responses[b, numbers[generated_numbers]].cpu(),
            DIGIT_IDS_KEY: digit_ids.cpu(),
            NUMBER_TEXTS_KEY: number_texts,
        }
        result = compute_score(
            data_source=data_sources[b], solution_str=solution_strs[b], ground_truth=ground_truths[b],
            extra_info=extra_infos[b], ntl_info=ntl_info, tau=tau, **extra,
        )
        results.append(result)
        if score_positions[b] >= 0:
            rm_scores[b, score_positions[b]] = float(result["score"])
        digit_positions = (generated[b] != IGNORE_INDEX).nonzero().squeeze(-1)
        slots = generated[b, digit_positions]
        if loss_targets == "correct_generated":
            if result.get("exact_match"):
                ntl_targets[b] = generated[b]
                if target_places is not None:
                    places = number_token_places(solution_strs[b], widths[slots])
                    if places is None:  # the tokens are not the text's (see number_token_places): no weighting
                        places = [0] * len(slots)
                    target_places[b, digit_positions] = torch.tensor(places, dtype=torch.long)
        else:
            aligned = {"number_texts": number_texts, "position_slots": slots.tolist(), "data_source": data_sources[b]}
            answer_targets = final_answer_targets(solution_strs[b], digit_positions.tolist(), ground_truths[b],
                                                  **aligned)
            for position, target in answer_targets.items():
                ntl_targets[b, position] = target
            if target_places is not None:
                places = final_answer_places(solution_strs[b], digit_positions.tolist(), ground_truths[b], **aligned)
                for position, place in places.items():
                    target_places[b, position] = place
    losses = [r["ntl_loss"] for r in results if r.get("ntl_available")]
    metrics = {
        "reward/ntl_score": sum(float(r["score"]) for r in results) / batch,
        "reward/exact_match": sum(float(r.get("exact_match", 0)) for r in results) / batch,
        "reward/ntl_coverage": len(losses) / batch,
        # samples whose digit log-probs were NaN/inf (scored 0): a numerical fault in the actor, never a reward
        "reward/ntl_non_finite": sum(float(r.get("ntl_non_finite", 0)) for r in results) / batch,
        # answers that are no number (a fraction, an expression): verl's exact-match verdict, no digit signal
        "reward/ntl_non_numeric": sum(r.get("ntl_status") == ANSWER_NOT_A_NUMBER for r in results) / batch,
    }
    if losses:
        metrics["reward/ntl_loss"] = sum(losses) / len(losses)
    ntl_weights = None if target_places is None else place_weights(target_places, loss_place_weighting)
    return RewardStepResult(rm_scores, ntl_targets, results, metrics, ntl_weights)
