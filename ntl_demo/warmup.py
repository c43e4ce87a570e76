"""Supervised warm-up: teach the freshly initialised policy the answer format before RL.

A random policy never writes ``#### <number>``, so every reward would be 0 and RL would have nothing to work
with. A few hundred cross-entropy steps on the worked solutions make it write digits and final answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .data import Problem


def encode_prompt(tokenizer, messages) -> list[int]:
    """Token ids of the chat-formatted prompt, ending with the assistant header (``add_generation_prompt``)."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_response(tokenizer, text: str) -> list[int]:
    """Token ids of a response, ending with the end-of-turn token the policy must learn to stop with."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def response_cross_entropy(model, prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int):
    """Mean cross-entropy of ``responses`` given ``prompts``, over response tokens only.

    The lm_head runs on the response positions only (logits at position t predict token t+1), so the
    [tokens, vocab] logits are those of the ~20 response tokens, not of the whole ~90-token sequence.
    """
    device = next(model.parameters()).device
    sequences = [p + r for p, r in zip(prompts, responses)]
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows, predict_at, targets = [], [], []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
        rows.append(torch.full_like(positions, row))
        predict_at.append(positions)
        targets.append(torch.tensor(response))
    rows, predict_at = torch.cat(rows).to(device), torch.cat(predict_at).to(device)
    logits = model.lm_head(hidden[rows, predict_at])
    return F.cross_entropy(logits.float(), torch.cat(targets).to(device))


def solution_pairs(tokenizer, problems: Sequence[Problem]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, worked-solution ids ending with the end-of-turn token) of the problems that have a solution.

    Raises:
        ValueError: no problem has a worked solution (``extra_info.answer``).
    """
    pairs = [
        (encode_prompt(tokenizer, p.messages), encode_response(tokenizer, p.solution)) for p in problems if p.solution
    ]
    if not pairs:
        raise ValueError("the warm-up needs problems with worked solutions (extra_info.answer); none were found")
    return pairs


def supervised_warmup(
    model,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    pad_token_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps on (prompt ids, response ids) pairs, the learning rate decaying
    linearly to 0; returns the step losses. ``on_step(step, loss)`` is called after each step."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(steps, 1))
    model.train()
    losses = []
    for step in range(steps):
        batch = rng.sample(pairs, min(batch_size, len(pairs)))
        loss = response_cross_entropy(model, [p for p, _ in batch], [r for _, r in batch], pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
