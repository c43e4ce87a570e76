"""Arithmetic word problems with worked solutions, stored in verl's GSM8K (or MATH) parquet format.

A row has the columns verl's ``examples/data_preprocess/gsm8k.py`` writes:

    data_source   "openai/gsm8k"
    prompt        [{"role": "user", "content": question + " " + INSTRUCTION}]
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": "<final answer, digits only>"}
    extra_info    {"split": ..., "index": ..., "answer": "<worked solution ending '#### <n>'>", "question": question}

so the demo's data and a parquet made by verl's preprocessing of the real GSM8K are read the same way. With the
``"boxed"`` answer format the rows are those of verl's ``examples/data_preprocess/math_dataset.py`` instead: data
source ``"DigitalLearningGmbH/MATH-lighteval"``, its instruction, and solutions ending ``\boxed{<n>}``; the rewards
route by the data source as verl's ``default_compute_score`` does.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
    """How a dataset asks for and writes the final answer: its verl data source, the prompt's instruction, and the
    solution's last line (``final_line.format(answer=...)``)."""

    data_source: str
    instruction: str
    final_line: str


ANSWER_FORMATS = {
    "gsm8k": AnswerFormat(DATA_SOURCE, INSTRUCTION, "#### {answer}"),
    "boxed": AnswerFormat("DigitalLearningGmbH/MATH-lighteval",
                          "Let's think step by step and output the final answer within \\boxed{}.",
                          "The answer is \\boxed{{{answer}}}."),
}

_NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ben", "Ivy")
_ITEMS = ("apples", "pens", "books", "coins", "cards", "eggs", "shells", "stamps")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One prompt with its reference: ``messages`` (chat prompt), ``ground_truth`` (final answer string) and
    ``solution`` (a worked solution ending ``#### <answer>``, used by the supervised warm-up; may be empty)."""

    messages: tuple[dict, ...]
    ground_truth: str
    solution: str
    data_source: str = DATA_SOURCE


def make_problem(rng: random.Random, max_operand: int, untagged_share: float = 0.0,
                 answer_format: str = "gsm8k") -> tuple[str, str, int]:
    """One word problem: (question, worked solution, answer).

    Three kinds, each one operation on numbers in [1, max_operand]: addition, subtraction (result >= 0) and
    multiplication, so a tiny model can learn the format (and some of the arithmetic) from a few thousand
    examples. Solutions are short (``"7 + 5 = 12\n#### 12"``): every response token costs a vocabulary-wide
    softmax on the CPU. A share ``untagged_share`` of them states the answer without the marker verl's rule for the
    format reads (``"7 + 5 = 12\nThe answer is 12."``), as solutions written for other graders do.
    ``answer_format``: a key of ``ANSWER_FORMATS`` (the solution's last line).
    """
    final_line = ANSWER_FORMATS[answer_format].final_line
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.choice(("add", "sub", "mul"))
    if kind == "add":
        a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
        answer = a + b
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        solution = f"{a} + {b} = {answer}"
    elif kind == "sub":
        a = rng.randint(2, max_operand)
        b = rng.randint(1, a)
        answer = a - b
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        solution = f"{a} - {b} = {answer}"
    else:
        a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
        answer = a * b
        question = f"{name} buys {b} boxes with {a} {item} each. How many {item} does {name} buy?"
        solution = f"{b} * {a} = {answer}"
    untagged = bool(untagged_share) and rng.random() < untagged_share  # no draw at 0: the same problems as without
    last_line = f"The answer is {answer}." if untagged else final_line.format(answer=answer)
    return question, f"{solution}\n{last_line}", answer


def generate_rows(num_rows: int, *, seed: int, split: str, max_operand: int = 9,
                  untagged_share: float = 0.0, answer_format: str = "gsm8k") -> list[dict]:
    """``num_rows`` generated problems as verl GSM8K (or MATH) rows (see the module docstring), reproducible from
    ``seed``; ``max_operand``, ``untagged_share`` and ``answer_format`` as in ``make_problem``."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {sorted(ANSWER_FORMATS)}, got {answer_format!r}")
    answer_style = ANSWER_FORMATS[answer_format]
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    if not 0.0 <= untagged_share <= 1.0:
        raise ValueError(f"untagged_share must be in [0, 1], got {untagged_share}")
    if max_operand < 2:
        raise ValueError(f"max_operand must be >= 2 (a subtraction needs a first number of at least 2), got "
                         f"{max_operand}")
    rng = random.Random(f"{split}-{seed}")
    rows = []
    for index in range(num_rows):
        question, solution, answer = make_problem(rng, max_operand, untagged_share, answer_format)
        rows.append(
            {
                "data_source": answer_style.data_source,
                "prompt": [{"role": "user", "content": f"{question} {answer_style.instruction}"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(answer)},
                "extra_info": {"split": split, "index": index, "answer": solution, "question": question},
            }
        )
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    """Write verl GSM8K rows to ``path`` (parent folders created)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def read_problems(path: Path) -> list[Problem]:
    """Problems from a verl GSM8K parquet (ours or verl's preprocessing of GSM8K).

    Raises:
        ValueError: the file lacks the ``prompt`` or ``reward_model`` column, or has no rows.
    """
    import pandas as pd

    frame = pd.read_parquet(path)
    missing = {"prompt", "reward_model"} - set(frame.columns)
    if missing:
        raise ValueError(f"--data {path}: not a verl GSM8K parquet, missing columns {sorted(missing)}")
    if len(frame) == 0:
        raise ValueError(f"--data {path}: the file has no rows")
    problems = []
    for row in frame.to_dict("records"):
        extra_info = row.get("extra_info") or {}
        problems.append(
            Problem(
                messages=tuple({"role": m["role"], "content": m["content"]} for m in row["prompt"]),
                ground_truth=str(row["reward_model"]["ground_truth"]),
                solution=str(extra_info.get("answer") or ""),
                data_source=str(row.get("data_source", DATA_SOURCE)),
            )
        )
    return problems
