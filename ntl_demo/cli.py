"""``python -m ntl_demo``: train a small policy with NTL rewards through verl_integration, on a plain CPU.

Defaults run in a few minutes on 2 CPU cores with nothing to download: the real Qwen2.5 tokenizer (built offline),
a tiny seeded Qwen2 policy, generated arithmetic problems in verl's GSM8K parquet format, a supervised warm-up,
then GRPO steps whose rewards and loss come from ``ntl_reward`` and ``verl_integration``. ``--tokenizer llama3``
runs the same on Llama-3's real tokenizer (numbers in tokens of up to 3 digits) with a tiny Llama policy;
``--answer-format boxed`` on MATH-style problems answered in ``\boxed{}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from .outputs import INCOMPLETE_SUFFIX, MARKER, OutputFolder, check_replaceable, incomplete_path
from .data import ANSWER_FORMATS
from .policy import TINY_ATTENTION_HEADS, TINY_HIDDEN_SIZE_MULTIPLE, TOKENIZERS
from .train import RunConfig

MODES = ("final", "all", "em")
NTL_METHODS = ("nll", "was", "mse")
NTL_TARGETS = ("final_answer", "correct_generated")
ANSWER_CREDITS = ("none", "exact_match", "distance")
# --compare: (label, settings) of each variant; every variant of a seed starts from the same warmed-up policy and
# gets the same RL steps, rollouts per step and learning rate (equal compute). The rewards are compared with the NTL
# loss term off; "final + NTL loss" is the default run (the term on).
COMPARE_VARIANTS = (
    ("em", {"mode": "em", "ntl_coef": 0.0}),
    ("final", {"mode": "final", "ntl_coef": 0.0}),
    ("final + NTL loss", {"mode": "final", "ntl_coef": RunConfig.ntl_coef}),
    ("final + EM credit", {"mode": "final", "answer_credit": "exact_match", "ntl_coef": 0.0}),
    ("all", {"mode": "all", "ntl_coef": 0.0}),
)
# Below this the sampler is greedy in all but name, and the engine's logits / temperature leave float32's range.
MIN_TEMPERATURE = 1e-3
SEED_RANGE = (0, 2**32 - 1)  # numpy's


def build_parser() -> argparse.ArgumentParser:
    defaults = RunConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ntl_demo",
        description="RL with Number Token Loss rewards through verl_integration on a tiny Qwen2 policy "
                    "(or a local checkpoint). Writes metrics.jsonl, curves.png, table.md under OUT/NAME, "
                    f"once the run is complete (until then under OUT/NAME{INCOMPLETE_SUFFIX}).",
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
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default=None,
                        help="the tiny policy's real tokenizer, built offline: qwen2.5 (one token per digit, the "
                             "default) or llama3 (number tokens of up to 3 digits, a tiny Llama policy); "
                             "--model brings its own")
    parser.add_argument("--answer-format", choices=sorted(ANSWER_FORMATS), default=defaults.answer_format,
                        help="generated problems: gsm8k ('#### N', data source openai/gsm8k) or boxed "
                             "('\\boxed{N}', MATH's data source; the rewards route by it) (default %(default)s)")
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
    parser.add_argument("--answer-credit", choices=ANSWER_CREDITS, default=defaults.answer_credit,
                        help="final mode only: none = exp(-L/tau) as specified; exact_match / distance also credit "
                             "the sampled answer: (exp(-L/tau) + EM) / 2 or (exp(-L/tau) + exp(-D/tau)) / 2, D its "
                             "place-value distance to the ground truth (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="rollout temperature, also applied by the engine to the log-probs (default %(default)s)")
    parser.add_argument("--adv-std-norm", action=argparse.BooleanOptionalAction, default=defaults.norm_adv_by_std,
                        help="GRPO divides each group's advantages by its std (verl's "
                             "algorithm.norm_adv_by_std_in_grpo); --no-adv-std-norm: Dr. GRPO, advantage = reward - "
                             "group mean (default: on)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="RL learning rate (default %(default)s)")
    parser.add_argument("--adam-eps", type=float, default=defaults.adam_eps,
                        help="AdamW epsilon of the RL optimizer (default %(default)s)")
    parser.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction,
                        default=defaults.freeze_embeddings,
                        help="RL leaves the token embedding and the LM head (151,936 rows, most never used here) "
                             "as the warm-up left them (default: %(default)s)")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="tiny policy's hidden size")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="tiny policy's layers")
    parser.add_argument("--max-operand", type=int, default=defaults.max_operand,
                        help="generated problems use numbers 1..N (default %(default)s)")
    parser.add_argument("--untagged-share", type=float, default=defaults.untagged_share,
                        help="share of warm-up solutions that end 'The answer is N.' instead of the format's marker "
                             "(default %(default)s)")
    parser.add_argument("--eval-problems", type=int, default=defaults.eval_problems,
                        help="held-out problems scored greedily before, during and after RL (default %(default)s)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help="also score the held-out problems every N RL steps; 0: before and after only "
                             "(default %(default)s)")
    parser.add_argument("--compare", action="store_true",
                        help="run every variant (" + ", ".join(label for label, _ in COMPARE_VARIANTS) + ") for "
                             "--steps steps and --seeds seeds and compare them with 95%% intervals")
    parser.add_argument("--seeds", type=int, default=3, help="--compare: seeds 0..N-1 (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad arguments with argparse's message-and-exit (status 2), never a traceback: every value that would
    fail later (in the policy, the data generator, the engine, the output folder) fails here."""
    if not (math.isfinite(args.tau) and args.tau > 0):
        parser.error(f"--tau must be a positive finite number, got {args.tau}")
    if not (math.isfinite(args.ntl_coef) and args.ntl_coef >= 0):
        parser.error(f"--ntl-coef must be a finite number >= 0, got {args.ntl_coef}")
    for option in ("lr", "adam_eps"):
        value = getattr(args, option)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{option.replace('_', '-')} must be a positive finite number, got {value}")
    if not (math.isfinite(args.temperature) and args.temperature >= MIN_TEMPERATURE):
        parser.error(f"--temperature must be a finite number >= {MIN_TEMPERATURE}, got {args.temperature}")
    for option, least, why in (
        ("steps", 1, ""), ("prompts_per_step", 1, ""), ("max_new_tokens", 1, ""), ("hidden_size", 1, ""),
        ("layers", 1, ""), ("eval_problems", 1, ""), ("seeds", 1, ""), ("warmup_steps", 0, ""), ("eval_every", 0, ""),
        ("group_size", 2, " (GRPO's advantage compares the samples of one prompt)"),
        ("max_operand", 2, " (subtraction problems need a first number >= 2)"),
    ):
        if getattr(args, option) < least:
            parser.error(f"--{option.replace('_', '-')} must be >= {least}{why}, got {getattr(args, option)}")
    if args.max_new_tokens >= RunConfig.max_token_len:
        parser.error(f"--max-new-tokens must be < {RunConfig.max_token_len} (prompt + response fit one "
                     f"{RunConfig.max_token_len}-token micro-batch of the engine), got {args.max_new_tokens}")
    if args.hidden_size % TINY_HIDDEN_SIZE_MULTIPLE:
        parser.error(f"--hidden-size must be a multiple of {TINY_HIDDEN_SIZE_MULTIPLE} ({TINY_ATTENTION_HEADS} "
                     f"attention heads, each of an even size for the rotary position embedding), got "
                     f"{args.hidden_size}")
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
        parser.error(f"--seed must be in [{SEED_RANGE[0]}, 2**32 - 1], got {args.seed}")
    if not 0.0 <= args.untagged_share <= 1.0:
        parser.error(f"--untagged-share must be in [0, 1], got {args.untagged_share}")
    if args.answer_credit != "none" and args.mode != "final" and not args.compare:
        parser.error(f"--answer-credit {args.answer_credit} needs --mode final (got --mode {args.mode})")
    if args.model is not None and args.tokenizer is not None:
        parser.error(f"--tokenizer {args.tokenizer} picks the tiny policy's tokenizer; --model {args.model} brings its "
                     "own (leave --tokenizer out)")
    if args.data is not None and args.answer_format != RunConfig.answer_format:
        parser.error(f"--answer-format {args.answer_format} shapes the generated problems; --data {args.data} has "
                     "its own (its data_source picks the reward's answer format)")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no Hugging Face checkpoint there (no config.json)")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    if args.name is not None and (args.name in ("", ".", "..") or Path(args.name).name != args.name
                                  or args.name.endswith(INCOMPLETE_SUFFIX)):
        parser.error(f"--name must be a plain folder name (no '/', not '.' or '..', not ending in "
                     f"{INCOMPLETE_SUFFIX}), got {args.name!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: not a folder")
    final = output_folder(_config(args), args.compare)
    try:
        check_replaceable(final)
    except ValueError as error:
        parser.error(f"--out/--name: {error}")
    for option, path in (("--model", args.model), ("--data", args.data)):
        if path is not None and any(path.resolve().is_relative_to(folder.resolve())
                                    for folder in (final, incomplete_path(final))):
            parser.error(f"{option} {path} lies in {final}, which this run replaces when it completes; copy it "
                         "elsewhere or choose another --name")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is "
                         "False); use --device cpu")


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        mode=args.mode, tokenizer=args.tokenizer or RunConfig.tokenizer, answer_format=args.answer_format, tau=args.tau, ntl_coef=args.ntl_coef, ntl_method=args.ntl_method,
        ntl_targets=args.ntl_targets, steps=args.steps, seed=args.seed, device=args.device, model=args.model,
        data=args.data, out=args.out, name=args.name, warmup_steps=args.warmup_steps,
        prompts_per_step=args.prompts_per_step, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, lr=args.lr, adam_eps=args.adam_eps, freeze_embeddings=args.freeze_embeddings,
        norm_adv_by_std=args.adv_std_norm, answer_credit=args.answer_credit, hidden_size=args.hidden_size,
        layers=args.layers, max_operand=args.max_operand, eval_problems=args.eval_problems,
        eval_every=args.eval_every, untagged_share=args.untagged_share, progress=not args.no_progress,
    )


def run_single(config: RunConfig) -> None:
    from .train import run

    result = run(config)
    summary = result.summary
    before, after = summary["eval_before"], summary["eval_after"]
    print(
        f"\nDone in {summary['total_seconds']:.0f} s (warm-up {summary['warmup_seconds']:.0f} s, RL "
        f"{summary['rl_seconds']:.0f} s). Held-out exact match (greedy, {config.eval_problems} problems): "
        f"{before['exact_match']:.3f} before RL -> {after['exact_match']:.3f} after "
        f"({after['exact_match'] - before['exact_match']:+.3f}); digit accuracy {before['digit_acc']:.3f} -> "
        f"{after['digit_acc']:.3f}; responses with a graded answer {before['answer_rate']:.3f} -> "
        f"{after['answer_rate']:.3f}.\n"
        f"  learning curves:                  {result.plot_path}\n"
        f"  metrics (one JSON line per step): {result.metrics_path}\n"
        f"  per-step table (markdown):        {result.table_path}\n"
        f"  summary:                          {result.run_dir / 'summary.json'}"
    )


def compare_run_name(label: str, seed: int) -> str:
    """The folder of one ``--compare`` run: ``"final + NTL loss"``, seed 1 -> ``"final+NTL-loss-seed1"``."""
    return f"{label.replace(' + ', '+').replace(' ', '-')}-seed{seed}"


def output_folder(config: RunConfig, compare: bool) -> Path:
    """The folder a (``--compare``) run fills once it is complete."""
    return Path(config.out) / ((config.name or "compare") if compare else config.run_name)


def run_compare(config: RunConfig, seeds: int) -> None:
    """Every variant of ``COMPARE_VARIANTS`` x seeds 0..seeds-1, each seed's variants starting from the same
    warmed-up policy; ``compare.png`` and ``compare.md`` (means with 95% t-intervals over the seeds). The whole
    folder is moved into place once every run and the report are complete (``ntl_demo.outputs``)."""
    from . import report
    from .train import run

    compare_dir = output_folder(config, compare=True)
    runs: dict[str, list[dict]] = {label: [] for label, _ in COMPARE_VARIANTS}
    with OutputFolder(compare_dir) as folder:
        for seed in range(seeds):
            initial_policy = None
            for label, settings in COMPARE_VARIANTS:
                name = compare_run_name(label, seed)
                print(f"\n=== compare: {label}, seed {seed} ===")
                folder.stage = f"the run {name} (its partial outputs: {name}{INCOMPLETE_SUFFIX}/)"
                # configs name their folders as they will be once complete; run() finds them through `folder`
                run_config = dataclasses.replace(config, seed=seed, out=compare_dir, name=name,
                                                 **{"answer_credit": "none", **settings})
                if initial_policy is not None:  # same warmed-up start for every variant of this seed
                    run_config = dataclasses.replace(run_config, model=initial_policy, warmup_steps=0)
                result = run(run_config, within=folder)
                if initial_policy is None and config.model is None:
                    initial_policy = compare_dir / name / "policy_init"
                runs[label].append({"rows": result.rows, "held_out": result.summary["held_out"]})
        folder.stage = "the compare report (compare.png, compare.md) after every run finished"
        title = (f"NTL demo --compare: {config.steps} RL steps of {config.prompts_per_step} x {config.group_size} "
                 f"rollouts, lr {config.lr}, temperature {config.temperature}"
                 f"{'' if config.norm_adv_by_std else ', Dr. GRPO (no std)'}")
        report.plot_compare(runs, folder.work / "compare.png", title)
        table = report.compare_markdown(runs, last_steps=max(1, config.steps // 4))
        (folder.work / "compare.md").write_text(f"{title}\n\n{table}\n")
    print(f"\n{table}\n\n  plot:  {compare_dir / 'compare.png'}\n  table: {compare_dir / 'compare.md'}\n"
          f"  runs:  {compare_dir}/<variant>-seed<seed>/")


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


def keep_freed_memory() -> None:
    """Keep freed memory in the process for reuse (glibc only; elsewhere nothing changes).

    glibc serves every allocation above 32 MB with its own mmap and unmaps it when freed, so each RL step would
    fault the engine's [tokens, 151,936] float32 buffers (hundreds of MB each) in afresh, zeroing every page:
    measured on the 2-core machine, 10.5 M minor page faults and 25 s of system time in 6 steps, against 0.8 M and
    2.5 s with this (and 3x the wall time when the machine is busy).
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h> parameter numbers
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    config = _config(args)
    quiet_libraries()
    keep_freed_memory()
    try:
        run_compare(config, args.seeds) if args.compare else run_single(config)
    except (ValueError, OSError) as error:
        print(f"python -m ntl_demo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        final = output_folder(config, args.compare)
        print(f"\npython -m ntl_demo: interrupted; the last complete run (if any) is untouched in {final}, this "
              f"run's partial outputs are in {incomplete_path(final)} (see its {MARKER})", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    return 0
