"""One demo run: data -> tokenizer and policy -> supervised warm-up -> RL steps through the NTL pipeline -> report."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ntl_kernels import NumberTokens, number_tokens

from . import pipeline, report
from .data import Problem, generate_rows, read_problems, write_parquet
from .metrics import digit_accuracy, exact_match, final_answer
from .outputs import OutputFolder
from .policy import build_policy, load_tokenizer
from .rollout import decode, right_padded, sample_responses
from .warmup import encode_prompt, solution_pairs, supervised_warmup

IGNORE_INDEX = -100


@dataclasses.dataclass
class RunConfig:
    """Everything a run depends on (the CLI's options; see ``ntl_demo.cli`` for what each means)."""

    mode: str = "final"
    tokenizer: str = "qwen2.5"
    answer_format: str = "gsm8k"
    tau: float = 1.0
    ntl_coef: float = 0.1
    ntl_method: str = "was"
    ntl_targets: str = "final_answer"
    steps: int = 30
    seed: int = 0
    device: str = "cpu"
    model: Path | None = None
    data: Path | None = None
    out: Path = Path("runs")
    name: str | None = None
    train_problems: int = 2000
    eval_problems: int = 64
    warmup_steps: int = 400
    warmup_lr: float = 3e-3
    warmup_batch: int = 16
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    lr: float = 2e-4
    adam_eps: float = 1e-8
    freeze_embeddings: bool = False
    norm_adv_by_std: bool = True
    answer_credit: str = "none"
    max_operand: int = 9
    untagged_share: float = 0.65
    eval_every: int = 10
    hidden_size: int = 64
    layers: int = 2
    max_token_len: int = 1024
    progress: bool = True

    @property
    def run_name(self) -> str:
        return self.name or f"{self.mode}-seed{self.seed}"


@dataclasses.dataclass
class RunResult:
    """Where a run's files are and what it measured: ``rows`` are the per-step metrics (as in metrics.jsonl)."""

    run_dir: Path
    metrics_path: Path
    plot_path: Path
    table_path: Path
    rows: list[dict]
    summary: dict


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _problems(config: RunConfig, run_dir: Path) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems: from ``--data`` (its last ``eval_problems`` rows held out) or generated and
    written to ``run_dir/data/{train,test}.parquet`` in verl's GSM8K format."""
    if config.data is not None:
        problems = read_problems(config.data)
        if len(problems) <= config.eval_problems:
            raise ValueError(f"--data {config.data}: {len(problems)} rows, need more than the {config.eval_problems} "
                             "held out for evaluation")
        return problems[: -config.eval_problems], problems[-config.eval_problems:]
    train, test = (
        write_parquet(generate_rows(rows, seed=config.seed, split=split, max_operand=config.max_operand,
                                    untagged_share=config.untagged_share, answer_format=config.answer_format),
                      run_dir / "data" / f"{split}.parquet")
        for split, rows in (("train", config.train_problems), ("test", config.eval_problems))
    )
    return read_problems(train), read_problems(test)


def check_sequence_length(config: RunConfig, tokenizer, problems: list[Problem]) -> None:
    """Raise ValueError naming --max-new-tokens when the longest prompt plus a full response would not fit one of the
    engine's micro-batches (``max_token_len`` tokens; verl cannot split a sequence), before any training."""
    longest_prompt = max(len(encode_prompt(tokenizer, problem.messages)) for problem in problems)
    if longest_prompt + config.max_new_tokens > config.max_token_len:
        raise ValueError(f"--max-new-tokens {config.max_new_tokens}: the longest prompt has {longest_prompt} tokens "
                         f"and prompt + response must fit the engine's {config.max_token_len}-token micro-batch; "
                         f"use --max-new-tokens <= {config.max_token_len - longest_prompt}")


def target_ntl(number_log_probs: torch.Tensor, ntl_targets: torch.Tensor, is_number: torch.Tensor,
               numbers: NumberTokens, method: str) -> float | None:
    """Mean NTL per target token of the policy's number-token distributions (nested ``[B, m, K]``: the rows of
    the responses' number tokens, ``is_number [B, R]``) against the ``[B, R]`` slot targets, with
    ``ntl_kernels.ntl_loss``; None when the batch has no target."""
    from ntl_kernels import ntl_loss

    if not bool((ntl_targets != IGNORE_INDEX).any()):
        return None
    columns = torch.arange(len(numbers))
    return float(ntl_loss(number_log_probs.values(), ntl_targets[is_number], columns, number_values=numbers.values,
                          method=method, reduction="mean"))


def evaluate(model, tokenizer, problems: list[Problem], max_new_tokens: int) -> dict[str, float]:
    """Greedy exact match, digit accuracy, answer rate (share of responses with an answer in the problem's format:
    ``####``, ``\\boxed{}``) and exact match of the last number in any format (``exact_match_any_format``) on
    held-out problems."""
    prompts = [encode_prompt(tokenizer, p.messages) for p in problems]
    responses, _ = decode(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return {
        "exact_match": float(np.mean([exact_match(t, p.ground_truth, data_source=p.data_source)
                                      for t, p in zip(texts, problems)])),
        "digit_acc": float(np.mean([digit_accuracy(t, p.ground_truth, p.data_source)
                                    for t, p in zip(texts, problems)])),
        "answer_rate": float(np.mean([final_answer(t, p.data_source) is not None for t, p in zip(texts, problems)])),
        "exact_match_any_format": float(np.mean([exact_match(t, p.ground_truth, "flexible")
                                                 for t, p in zip(texts, problems)])),
    }


def _reward_by_kind(results: list[dict]) -> dict:
    """Mean score of the step's correct answers, wrong answers and responses without an answer (None when a kind is
    absent), with their counts: what the reward pays for (as the reward itself graded each answer)."""
    kinds = {"reward_correct": [], "reward_wrong": [], "reward_no_answer": []}
    for result in results:
        kind = ("reward_no_answer" if not result["pred"]
                else "reward_correct" if result["exact_match"] else "reward_wrong")
        kinds[kind].append(float(result["score"]))
    metrics = {}
    for kind, scores in kinds.items():
        metrics[kind] = float(np.mean(scores)) if scores else None
        metrics[f"{kind}_count"] = len(scores)
    return metrics


def rl_step(engine: pipeline.PolicyEngine, model, tokenizer, problems: list[Problem], config: RunConfig,
            rng: random.Random, generator: torch.Generator, numbers: NumberTokens) -> dict:
    """One RL step: rollout, old_log_prob (+ number-token log-probs), NTL reward step, GRPO advantage, update,
    weight sync.
    Returns the step's metrics (without ``step`` / ``seconds``)."""
    from verl.utils.profiler import simple_timer

    timing: dict[str, float] = {}  # seconds per phase, reported as verl's timing_s/<phase> metrics
    timed = functools.partial(simple_timer, timing_raw=timing)
    batch = rng.sample(problems, min(config.prompts_per_step, len(problems)))
    with timed("gen"):
        rollout = sample_responses(model, tokenizer, [encode_prompt(tokenizer, p.messages) for p in batch],
                                   group_size=config.group_size, max_new_tokens=config.max_new_tokens,
                                   temperature=config.temperature, generator=generator)
    truths = [batch[g].ground_truth for g in rollout.group]
    sources = [batch[g].data_source for g in rollout.group]
    responses, response_mask = right_padded(rollout.response_ids, tokenizer.pad_token_id)
    with timed("old_log_prob"):
        old_log_probs, number_log_probs = engine.old_log_probs(rollout.prompt_ids, rollout.response_ids,
                                                                config.temperature)
    rollout_log_probs, _ = right_padded(rollout.log_probs, 0.0)
    with timed("reward"):
        rewards = pipeline.reward_step(
            config.mode, responses=responses, response_mask=response_mask, number_log_probs=number_log_probs,
            texts=rollout.texts, ground_truths=truths, data_sources=sources,
            numbers=numbers, tau=config.tau, ntl_targets=config.ntl_targets, answer_credit=config.answer_credit,
        )
        advantages = pipeline.grpo_advantages(rewards.rm_scores, response_mask, rollout.group,
                                              norm_adv_by_std=config.norm_adv_by_std)
    with timed("update_actor"):
        actor_metrics = engine.update(rollout.prompt_ids, rollout.response_ids, old_log_probs=old_log_probs,
                                      advantages=advantages, ntl_targets=rewards.ntl_targets,
                                      temperature=config.temperature)
    with timed("update_weights"):
        model.load_state_dict(dict(engine.rollout_weights()))
    metrics = {
        "exact_match": float(np.mean([exact_match(t, g, data_source=d) for t, g, d in zip(rollout.texts, truths,
                                                                                            sources)])),
        "reward_mean": float(rewards.rm_scores.sum(-1).mean()),
        "ntl_loss": target_ntl(number_log_probs, rewards.ntl_targets,
                               torch.isin(responses, numbers.ids) & response_mask.bool(), numbers, config.ntl_method),
        "digit_acc": float(np.mean([digit_accuracy(t, g, d) for t, g, d in zip(rollout.texts, truths, sources)])),
        "ntl_target_digits": int((rewards.ntl_targets != IGNORE_INDEX).sum()),
        "response_length": float(response_mask.sum(-1).float().mean()),
        # verl's rollout-vs-actor check: the engine must score the sampled tokens as the sampler did
        "rollout/logprob_diff_max": float(((old_log_probs - rollout_log_probs).abs() * response_mask).max()),
        "sample_response": rollout.texts[0],
    }
    metrics.update(_reward_by_kind(rewards.results))
    metrics.update(rewards.metrics)
    metrics.update(actor_metrics)
    metrics.update({f"timing_s/{phase}": seconds for phase, seconds in timing.items()})
    return metrics


def run(config: RunConfig, *, echo: Callable[[str], None] = print, within: OutputFolder | None = None) -> RunResult:
    """Run one demo training and write ``metrics.jsonl``, ``curves.png``, ``table.md`` and ``summary.json`` under
    ``config.out / config.run_name``: into its ``.incomplete`` folder while it runs, moved into place once complete
    (``ntl_demo.outputs``). ``within``: the ``OutputFolder`` of a group of runs (``--compare``) that
    ``config.out`` and ``config.model`` lie in, named by their final paths."""
    def located(path: Path) -> Path:
        return within.located(path) if within is not None else path

    final_dir = located(Path(config.out) / config.run_name)
    with OutputFolder(final_dir) as folder:
        rows, summary = _write_run(config, folder, None if config.model is None else located(config.model), echo)
    return RunResult(final_dir, final_dir / "metrics.jsonl", final_dir / "curves.png", final_dir / "table.md", rows,
                     summary)


def _write_run(config: RunConfig, folder: OutputFolder, model_path: Path | None,
               echo: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The run itself, writing into ``folder.work`` and keeping ``folder.stage`` current: (per-step rows, summary).
    ``model_path``: ``config.model`` where it is now."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    _seed_everything(config.seed)
    run_dir = folder.work
    folder.stage = "the set-up (data, tokenizer, policy)"
    train_problems, eval_problems = _problems(config, run_dir)
    tokenizer = load_tokenizer(model_path, config.tokenizer)
    check_sequence_length(config, tokenizer, train_problems + eval_problems)
    numbers = number_tokens(tokenizer)
    model = build_policy(model_path, seed=config.seed, device=config.device, hidden_size=config.hidden_size,
                         num_layers=config.layers, tokenizer_name=config.tokenizer)
    setup_seconds = time.perf_counter() - start

    warmup_losses = []
    warmup_start = time.perf_counter()
    if config.warmup_steps > 0:
        folder.stage = f"the supervised warm-up (0 of {config.warmup_steps} steps done)"
        with tqdm(total=config.warmup_steps, desc="warm-up (supervised)", disable=not config.progress,
                  leave=False) as bar:
            def on_step(step, loss):
                folder.stage = f"the supervised warm-up ({step + 1} of {config.warmup_steps} steps done)"
                bar.set_postfix(loss=f"{loss:.3f}")
                bar.update()

            warmup_losses = supervised_warmup(model, solution_pairs(tokenizer, train_problems),
                                              pad_token_id=tokenizer.pad_token_id, steps=config.warmup_steps,
                                              batch_size=config.warmup_batch, lr=config.warmup_lr,
                                              seed=config.seed, on_step=on_step)
        echo(f"warm-up: {config.warmup_steps} steps, loss {warmup_losses[0]:.3f} -> {warmup_losses[-1]:.3f}")
    warmup_seconds = time.perf_counter() - warmup_start
    folder.stage = "the engine set-up and the held-out evaluation before RL"
    policy_dir = model_path
    if policy_dir is None or config.warmup_steps > 0:
        policy_dir = run_dir / "policy_init"  # the engine loads the (warmed-up) policy from disk, as verl does
        model.save_pretrained(policy_dir)
        tokenizer.save_pretrained(policy_dir)
    # verl prints its engine set-up (model size, memory, scheduler); it goes to engine.log, not the console
    with open(run_dir / "engine.log", "w") as engine_log, contextlib.redirect_stdout(engine_log):
        engine = pipeline.PolicyEngine(policy_dir, numbers=numbers, lr=config.lr,
                                       ntl_coef=config.ntl_coef, ntl_method=config.ntl_method,
                                       max_token_len=config.max_token_len, total_steps=config.steps,
                                       device=config.device, adam_eps=config.adam_eps,
                                       freeze_embeddings=config.freeze_embeddings)
    model.load_state_dict(dict(engine.rollout_weights()))
    model.eval()
    held_out = [{"step": 0, **evaluate(model, tokenizer, eval_problems, config.max_new_tokens)}]
    rl_start = time.perf_counter()

    metrics_log = report.MetricsLog(run_dir / "metrics.jsonl")
    rows: list[dict] = []
    _seed_everything(config.seed)  # RL sampling independent of whether a warm-up ran in this process (--compare)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    echo(f"RL: mode={config.mode} tau={config.tau} ntl_coef={config.ntl_coef} temperature={config.temperature} "
         f"({config.prompts_per_step} prompts x {config.group_size} samples per step); held-out exact match "
         f"before RL {held_out[0]['exact_match']:.3f}")
    echo(report.table_header())
    for step in tqdm(range(1, config.steps + 1), desc=f"RL ({config.mode})", disable=not config.progress,
                     leave=False):
        folder.stage = f"RL step {step} of {config.steps} (steps before it finished, in metrics.jsonl)"
        step_start = time.perf_counter()
        metrics = rl_step(engine, model, tokenizer, train_problems, config, rng, generator, numbers)
        row = {"step": step, **metrics, "seconds": time.perf_counter() - step_start}
        if step == config.steps or (config.eval_every and step % config.eval_every == 0):
            held_out.append({"step": step, **evaluate(model, tokenizer, eval_problems, config.max_new_tokens)})
            row["held_out_exact_match"] = held_out[-1]["exact_match"]
        metrics_log.write(row)
        rows.append(row)
        if config.progress:
            tqdm.write(report.table_row(row))  # above the progress bar, which stays at the bottom
        else:
            echo(report.table_row(row))
    rl_seconds = time.perf_counter() - rl_start
    folder.stage = "the report (curves.png, table.md, summary.json) after every RL step finished"

    before, after = held_out[0]["exact_match"], held_out[-1]["exact_match"]
    report.plot_run(rows, held_out, run_dir / "curves.png",
                    f"NTL demo: mode={config.mode}, tau={config.tau}, ntl_coef={config.ntl_coef}, seed={config.seed}")
    (run_dir / "table.md").write_text(report.markdown_table(rows) + "\n")
    summary = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
        "warmup_loss_first": warmup_losses[0] if warmup_losses else None,
        "warmup_loss_last": warmup_losses[-1] if warmup_losses else None,
        "eval_before": held_out[0],
        "eval_after": held_out[-1],
        "held_out_exact_match_gain": after - before,
        "held_out": held_out,
        "setup_seconds": setup_seconds,
        "warmup_seconds": warmup_seconds,
        "rl_seconds": rl_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rows, summary
