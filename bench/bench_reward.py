"""Reward throughput on a GSM8K-sized batch: 256 responses x 512 tokens, form (b) (digit log-probs), on CPU.

Run on the production CPU path, WITHOUT TRITON_INTERPRET (``ntl_loss`` then runs its torch reference):

    .venv/bin/python -m bench.bench_reward

Responses are GSM8K-style text with many numbers, tokenized by the real Qwen2.5 tokenizer, right-padded to
512 tokens and decoded back (as verl does); digit log-probs are random. Times the batched ``compute_scores``
(what a trainer calls) and, for comparison, 256 one-sample ``compute_score`` calls. Target: batched < 1 s.

Then the worst case: one runaway 1 MiB response of every shape a sampler can produce (``runaway_responses``: runs
of dots, commas, digits, ``#``, markers followed by 1 MiB of spaces, ...), scored end to end by one
``compute_score`` call for each mode and extraction (Final with ``answer_credit="distance"``, its most work), with a
precomputed loss (the reward's text work alone) and with form (b) (one token per character, [1 MiB, 10] digit
log-probs); the slowest shape is reported. Target: well under 1 s for the text work (96e1393's extraction took
7-11 s at 40 KB and hours at 1 MiB).
Writes ``bench/results/reward_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from bench.common import environment, median_ms, write_report
from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from ntl_reward import compute_scores
from ntl_reward.all_tokens import compute_score as all_tokens_score
from ntl_reward.final_answer import compute_score as final_answer_score

BATCH, LENGTH = 256, 512
RUNAWAY_SIZE = 1 << 20  # characters
PAD_ID = 151643  # <|endoftext|>
OTHER_ID = 0  # "!": the token of every non-digit character of a runaway response
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


def runaway_responses(size: int) -> dict[str, str]:
    """Response text of every shape a sampler can produce, about ``size`` characters each (shape -> text).

    Long runs of each character class the extraction reads (digits, ``.``, ``,``, ``#``, ``-``, the filler
    ``[ \\t*$]`` after a marker), markers repeated, numbers repeated, unicode digits, NUL, random unicode
    (surrogates excluded) and a random mix; the empty response too."""
    rng = random.Random(0)
    code_points = [rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000)])
                   for _ in range(4096)]
    alphabet = "####    -.,$*\t\n0123456789a\u0663\uff11\x00"
    random_unicode = "".join(map(chr, code_points)) * max(size // 4096, 1)
    mixed = "".join(rng.choice(alphabet) for _ in range(4096)) * max(size // 4096, 1)
    return {
        "empty": "", "digits": "7" * size, "dots": "." * size, "commas": "," * size, "hashes": "#" * size,
        "minus": "-" * size, "spaces": " " * size, "newlines": "\n" * size, "nul": "\x00" * size,
        "marker_spaces": "####" + " " * size, "marker_stars": "####" + "*" * size,
        "marker_dollars": "####" + "$" * size, "marker_tabs_digit": "####" + "\t" * size + "5",
        "markers": "#### " * (size // 5), "marker_dots": "####." * (size // 5), "marker_minus": "####-" * (size // 5),
        "marker_runs": "#####." * (size // 6), "digit_groups": "1," * (size // 2), "decimal_points": "1." * (size // 2),
        "minus_dots": "-." * (size // 2), "dots_then_marker": "." * size + "#### 5",
        "marker_then_digits": "#### " + "9" * size, "numbers": "12 " * (size // 3),
        "arabic_indic_digits": "\u0663" * size, "fullwidth_digits": "\uff11" * size,
        "random_unicode": random_unicode, "mixed": mixed,
    }


def runaway_ntl_info(text: str, seed: int = 0) -> dict:
    """Form (b) for ``text`` with one token per character: the digit's token for an ASCII digit, else OTHER_ID."""
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS)
    codes = torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
    is_digit = (codes >= ord("0")) & (codes <= ord("9"))
    ids = torch.where(is_digit, digit_ids[(codes - ord("0")).clamp(0, 9)], OTHER_ID)
    logits = torch.randn(len(text), 10, generator=torch.Generator().manual_seed(seed))
    return {"digit_log_probs": torch.log_softmax(logits, -1), "response_ids": ids, "digit_ids": digit_ids}


def runaway_rows(ntl_info_form: str) -> list[dict]:
    """Per mode and extraction: the slowest 1 MiB response shape, end to end through compute_score.

    ``ntl_info_form``: ``"ntl_loss"`` (a precomputed loss: the reward's text work alone, extraction and matching)
    or ``"digit_log_probs"`` (form (b), one token per character: with ntl_kernels' work on [1 MiB, 10])."""
    rows = []
    responses = {
        shape: (text, runaway_ntl_info(text) if ntl_info_form == "digit_log_probs" else {"ntl_loss": 0.5})
        for shape, text in runaway_responses(RUNAWAY_SIZE).items()
    }
    for mode, score, extra in (("final_answer", final_answer_score, {"answer_credit": "distance"}),
                               ("all_tokens", all_tokens_score, {})):
        for extraction in ("strict", "flexible"):
            times = {
                shape: median_ms(lambda: score("openai/gsm8k", text, "18", ntl_info=info, extraction=extraction,
                                               **extra), "cpu", cpu_repeats=1)
                for shape, (text, info) in responses.items()
            }
            worst = max(times, key=times.get)
            rows.append({"mode": mode, "method": "default", "call": f"compute_score, 1 MiB worst, {ntl_info_form} "
                         f"({worst}, {extraction})", "batch": 1, "tokens": len(responses[worst][0]),
                         "ms": times[worst], "under_1s": times[worst] < 1000.0})
    return rows


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
    rows += runaway_rows("ntl_loss") + runaway_rows("digit_log_probs")
    notes = [
        f"Batch: {BATCH} GSM8K-style responses x {LENGTH} tokens (Qwen2.5 ids, right-padded), {digits} digit tokens "
        "in all; form (b) ntl_info: digit_log_probs [256, 512, 10] float32, response_ids, response_mask.",
        f"TRITON_INTERPRET={'1 (interpreted kernels: NOT the production path)' if interpreted else 'unset'}; "
        f"torch threads: {torch.get_num_threads()}. Median of 5 timed runs after a warm-up (3 for the loops).",
        f"1 MiB worst rows: {len(runaway_responses(16))} response shapes (runaway_responses) of ~{RUNAWAY_SIZE} "
        "characters, each one compute_score call (Final with answer_credit='distance'), one timed run after a "
        "warm-up; the slowest shape is named. ntl_loss rows: a precomputed loss, so the reward's text work alone "
        "(extraction, matching, distance). digit_log_probs rows: form (b) with one token per character "
        "([1 MiB, 10] log-probs), so ntl_kernels' per-token tensor work (digit_targets, log-softmax) is in them.",
        f"Load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
    ]
    report = write_report(OUT_DIR, "reward_cpu", environment("cpu"), rows, notes)
    print(report.read_text())


if __name__ == "__main__":
    main()
