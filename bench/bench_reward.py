"""Reward throughput on a GSM8K-sized batch: 256 responses x 512 tokens, form (b) (digit log-probs), on CPU.

Run on the production CPU path, WITHOUT TRITON_INTERPRET (``ntl_loss`` then runs its torch reference):

    .venv/bin/python -m bench.bench_reward

Responses are GSM8K-style text with many numbers, tokenized by the real Qwen2.5 tokenizer, right-padded to
512 tokens and decoded back (as verl does); digit log-probs are random. Times the batched ``compute_scores``
(what a trainer calls) and, for comparison, 256 one-sample ``compute_score`` calls. Target: batched < 1 s.
Writes ``bench/results/reward_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from bench.common import environment, median_ms, write_report
from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from ntl_reward import compute_scores
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.final_answer import compute_score as final_answer_score

BATCH, LENGTH = 256, 512
PAD_ID = 151643  # <|endoftext|>
OUT_DIR = Path(__file__).parent / "results"


def gsm8k_like_response(rng: random.Random) -> tuple[str, str]:
    """(response, ground truth): arithmetic steps with numbers, then ``#### answer`` (right 60% of the time)."""
    steps, total = [], rng.randint(1, 500)
    while len(steps) < rng.randint(8, 40):
        a, b = rng.randint(1, 2000), rng.randint(1, 99)
        steps.append(f"Next, {a} * {b} = {a * b} and {total} + {a} = {total + a}, so we have ${total + a:,}.")
        total += a
    answer = total if rng.random() < 0.6 else total + rng.randint(1, 9)
    return " ".join(steps) + f"\n#### {answer}", str(total)


def make_batch(seed: int = 0):
    rng = random.Random(seed)
    tokenizer = qwen2_5_tokenizer()
    texts, truths, ids, mask = [], [], [], []
    for _ in range(BATCH):
        response, truth = gsm8k_like_response(rng)
        sample = tokenizer.encode(response, add_special_tokens=False)[:LENGTH]  # long ones truncated, as rollout does
        texts.append(tokenizer.decode(sample, skip_special_tokens=True))
        truths.append(truth)
        ids.append(sample + [PAD_ID] * (LENGTH - len(sample)))
        mask.append([1] * len(sample) + [0] * (LENGTH - len(sample)))
    logits = torch.randn(BATCH, LENGTH, 10, generator=torch.Generator().manual_seed(seed))
    ntl_info = {
        "digit_log_probs": torch.log_softmax(logits, -1),
        "response_ids": torch.tensor(ids),
        "digit_ids": torch.tensor(QWEN2_5_DIGIT_IDS),
        "response_mask": torch.tensor(mask),
    }
    return texts, truths, ntl_info


def one_by_one(score, texts, truths, ntl_info):
    for b in range(BATCH):
        n = int(ntl_info["response_mask"][b].sum())
        score("openai/gsm8k", texts[b], truths[b], ntl_info={
            "digit_log_probs": ntl_info["digit_log_probs"][b, :n], "response_ids": ntl_info["response_ids"][b, :n],
            "digit_ids": ntl_info["digit_ids"]})


def main() -> None:
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    texts, truths, ntl_info = make_batch()
    digits = int(sum(r["ntl_digits"] for r in compute_scores("all_tokens", texts, truths, ntl_info)))
    rows = []
    for mode, score in (("final_answer", final_answer_score), ("all_tokens", all_tokens_score)):
        for method in ("nll", "confidence", "was", "mse"):
            batched = median_ms(lambda: compute_scores(mode, texts, truths, ntl_info, method=method), "cpu")
            rows.append({"mode": mode, "method": method, "call": "compute_scores (batched)", "batch": BATCH,
                         "tokens": LENGTH, "ms": batched, "under_1s": batched < 1000.0})
        loop = median_ms(lambda: one_by_one(score, texts, truths, ntl_info), "cpu", cpu_repeats=3)
        rows.append({"mode": mode, "method": "default", "call": "256 x compute_score", "batch": BATCH,
                     "tokens": LENGTH, "ms": loop, "under_1s": loop < 1000.0})
    notes = [
        f"Batch: {BATCH} GSM8K-style responses x {LENGTH} tokens (Qwen2.5 ids, right-padded), {digits} digit tokens "
        "in all; form (b) ntl_info: digit_log_probs [256, 512, 10] float32, response_ids, response_mask.",
        f"TRITON_INTERPRET={'1 (interpreted kernels: NOT the production path)' if interpreted else 'unset'}; "
        f"torch threads: {torch.get_num_threads()}. Median of 5 timed runs after a warm-up (3 for the loops).",
    ]
    report = write_report(OUT_DIR, "reward_cpu", environment("cpu"), rows, notes)
    print(report.read_text())


if __name__ == "__main__":
    main()
