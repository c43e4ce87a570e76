"""Rollout with Hugging Face ``generate``: each prompt sampled ``group_size`` times (GRPO groups)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


@dataclasses.dataclass
class Rollout:
    """Sampled responses of one step.

    ``prompt_ids[i]`` / ``response_ids[i]`` are the token ids of sample i (the response ends at and includes the
    end-of-turn token when the policy emitted one); ``group[i]`` is the index of its prompt in the step's batch;
    ``texts[i]`` the decoded response.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    group: list[int]
    texts: list[str]


def left_padded(prompts: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``prompts`` as a left-padded ``[B, width]`` batch for ``generate``: (input_ids, attention_mask)."""
    width = max(map(len, prompts))
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
) -> Rollout:
    """Sample ``group_size`` responses for each prompt (left-padded batch, nucleus off, ``temperature``)."""
    device = next(model.parameters()).device
    repeated = [prompt for prompt in prompts for _ in range(group_size)]
    input_ids, attention_mask = left_padded(repeated, tokenizer.pad_token_id)
    width = input_ids.shape[1]
    model.eval()
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        do_sample=True,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    responses = []
    for row in output[:, width:].tolist():
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        responses.append(row[:end])
    return Rollout(
        prompt_ids=[list(p) for p in repeated],
        response_ids=responses,
        group=[i for i in range(len(prompts)) for _ in range(group_size)],
        texts=tokenizer.batch_decode(responses, skip_special_tokens=True),
    )
