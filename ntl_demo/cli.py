"""``python -m ntl_demo``: train a small policy with NTL rewards through verl_integration, on a plain CPU.

Defaults run in a few minutes on 2 CPU cores with nothing to download: the real Qwen2.5 tokenizer (built offline),
a tiny seeded Qwen2 policy, generated arithmetic problems in verl's GSM8K parquet format, a supervised warm-up,
then GRPO steps whose rewards and loss come from ``ntl_reward`` and ``verl_integration``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from .train import RunConfig

MODES = ("final", "all", "em")
NTL_METHODS = ("nll", "was", "mse")
NTL_TARGETS = ("final_answer", "correct_generated")
COMPARE_SEEDS = (0, 1, 2)


def build_parser() -> argparse.ArgumentParser:
    defaults = RunConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ntl_demo",
        description="RL with Number Token Loss rewards through verl_integration on a tiny Qwen2 policy "
                    "(or a local checkpoint). Writes metrics.jsonl, curves.png, table.md under OUT/NAME.",
    )
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="reward: final = exp(-L/tau) on the final answer's digits vs the ground truth; "
                             "all = exact_match * exp(-L/tau) over every generated digit; em = exact match only "
                             "(default %(default)s)")
    parser.add_argument("--tau", type=float, default=defaults.tau, help="reward temperature, > 0 (default %(default)s)")
    parser.add_argument("--ntl-coef", type=float, default=defaults.ntl_coef,
                        help="weight of the NTL term added to verl's ppo_loss, >= 0 (default %(default)s)")
    parser.add_argument("--ntl-method", choices=NTL_METHODS, default=defaults.ntl_method,
                        help="per-digit NTL of the loss term (default %(default)s)")
    parser.add_argument("--ntl-targets", choices=NTL_TARGETS, default=defaults.ntl_targets,
                        help="digits the NTL loss term trains: the final answer's digits against the ground truth, "
                             "or every generated digit of correct responses (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="RL steps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of data, init and sampling")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--model", type=Path, default=None,
                        help="local Hugging Face checkpoint (e.g. Qwen2.5-0.5B-Instruct); default: a tiny Qwen2")
    parser.add_argument("--data", type=Path, default=None,
                        help="verl GSM8K parquet (e.g. from verl's examples/data_preprocess/gsm8k.py); "
                             "default: generated arithmetic problems")
    parser.add_argument("--out", type=Path, default=defaults.out, help="output folder (default %(default)s)")
    parser.add_argument("--name", default=None, help="run name (default MODE-seedSEED, or compare)")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps,
                        help="supervised warm-up steps before RL (default %(default)s; 0 for a trained checkpoint)")
    parser.add_argument("--prompts-per-step", type=int, default=defaults.prompts_per_step)
    parser.add_argument("--group-size", type=int, default=defaults.group_size, help="samples per prompt (GRPO group)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="RL learning rate (default %(default)s)")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="tiny policy's hidden size")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="tiny policy's layers")
    parser.add_argument("--eval-problems", type=int, default=defaults.eval_problems,
                        help="held-out problems scored greedily before and after RL")
    parser.add_argument("--compare", action="store_true",
                        help="run the three modes for --steps steps and seeds 0, 1, 2 and compare them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad arguments with argparse's message-and-exit (status 2), never a traceback."""
    if not (math.isfinite(args.tau) and args.tau > 0):
        parser.error(f"--tau must be a positive finite number, got {args.tau}")
    if not (math.isfinite(args.ntl_coef) and args.ntl_coef >= 0):
        parser.error(f"--ntl-coef must be a finite number >= 0, got {args.ntl_coef}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    for option in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "hidden_size", "layers",
                   "eval_problems"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if args.hidden_size % 4:
        parser.error(f"--hidden-size must be a multiple of 4 (4 attention heads), got {args.hidden_size}")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no Hugging Face checkpoint there (no config.json)")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is "
                         "False); use --device cpu")


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        mode=args.mode, tau=args.tau, ntl_coef=args.ntl_coef, ntl_method=args.ntl_method,
        ntl_targets=args.ntl_targets, steps=args.steps, seed=args.seed, device=args.device, model=args.model,
        data=args.data, out=args.out, name=args.name, warmup_steps=args.warmup_steps,
        prompts_per_step=args.prompts_per_step, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
        lr=args.lr, hidden_size=args.hidden_size, layers=args.layers, eval_problems=args.eval_problems,
        progress=not args.no_progress,
    )


def run_single(config: RunConfig) -> None:
    from .train import run

    result = run(config)
    before, after = result.summary["eval_before"], result.summary["eval_after"]
    print(
        f"\nDone in {result.summary['total_seconds']:.0f} s. Held-out exact match (greedy, "
        f"{config.eval_problems} problems): {before['exact_match']:.3f} before RL -> {after['exact_match']:.3f} after; "
        f"digit accuracy {before['digit_acc']:.3f} -> {after['digit_acc']:.3f}.\n"
        f"  metrics (one JSON line per step): {result.metrics_path}\n"
        f"  learning curves:                  {result.plot_path}\n"
        f"  per-step table (markdown):        {result.table_path}\n"
        f"  summary:                          {result.run_dir / 'summary.json'}"
    )


def run_compare(config: RunConfig) -> None:
    """The three modes x seeds 0, 1, 2, each seed's modes starting from the same warmed-up policy."""
    from . import report
    from .train import run

    compare_dir = Path(config.out) / (config.name or "compare")
    runs: dict[str, list[list[dict]]] = {mode: [] for mode in MODES}
    held_out: dict[str, list[float]] = {mode: [] for mode in MODES}
    for seed in COMPARE_SEEDS:
        initial_policy = None
        for mode in MODES:
            print(f"\n=== compare: mode={mode} seed={seed} ===")
            run_config = dataclasses.replace(config, mode=mode, seed=seed, out=compare_dir, name=f"{mode}-seed{seed}")
            if initial_policy is not None:  # same warmed-up start for every mode of this seed
                run_config = dataclasses.replace(run_config, model=initial_policy, warmup_steps=0)
            result = run(run_config)
            if initial_policy is None and config.model is None:
                initial_policy = result.run_dir / "policy_init"
            runs[mode].append(result.rows)
            held_out[mode].append(result.summary["eval_after"]["exact_match"])
    plot = report.plot_compare(runs, compare_dir / "compare.png",
                               f"NTL demo: modes over {len(COMPARE_SEEDS)} seeds, {config.steps} RL steps")
    table = report.compare_markdown(runs, held_out, last_steps=max(1, config.steps // 2))
    (compare_dir / "compare.md").write_text(table + "\n")
    print(f"\n{table}\n\n  plot:  {plot}\n  table: {compare_dir / 'compare.md'}\n  runs:  {compare_dir}/<mode>-seed<seed>/")


def quiet_libraries() -> None:
    """Keep the demo's output to its own progress, table and summary: verl, transformers and torch report their
    set-up at INFO/WARNING level and print weight-loading bars; only their errors are shown."""
    import logging
    import os
    import warnings

    os.environ.setdefault("VERL_LOGGING_LEVEL", "ERROR")  # read by verl's modules when they are imported
    warnings.filterwarnings("ignore", module=r"verl\..*")
    warnings.filterwarnings("ignore", message=r".*engine is not available.*")
    for name in ("verl", "torch.fx._symbolic_trace", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    config = _config(args)
    quiet_libraries()
    try:
        run_compare(config) if args.compare else run_single(config)
    except (ValueError, OSError) as error:
        print(f"python -m ntl_demo: error: {error}", file=sys.stderr)
        return 1
    return 0
