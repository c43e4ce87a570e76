"""The embedded demo (`python -m ntl_demo`): a real 2-step run, its outputs, NTL training, bad arguments."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ntl_demo import cli, report
from ntl_demo.data import ANSWER_FORMATS, INSTRUCTION, generate_rows, read_problems, write_parquet
from ntl_demo.metrics import digit_accuracy, exact_match

REPO = Path(__file__).resolve().parents[1]
# Tiny sizes: the run exercises every stage (warm-up, engine, reward step, update, plots) in well under a minute.
TINY = ["--warmup-steps", "3", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8",
        "--hidden-size", "16", "--layers", "1", "--eval-problems", "4", "--no-progress"]


def _run_demo(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    # As `make demo` runs it, without the Triton interpreter (conftest turns it on for the kernel tests): the actor
    # keeps verl's passes and the digit statistics their torch path on the CPU (the single pass's kernels under the
    # interpreter would take minutes over the demo's vocabulary-wide rows).
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "ntl_demo", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_two_step_run_writes_finite_metrics_table_and_plot(tmp_path):
    result = _run_demo("--steps", "2", "--mode", "all", "--ntl-coef", "0.5", "--temperature", "0.7",
                       "--eval-every", "2", "--out", str(tmp_path), "--name", "two", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "two"
    rows = report.read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("exact_match", "reward_mean", "digit_acc", "seconds", "actor/pg_loss", "grad_norm"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row[key])
        assert 0.0 <= row["exact_match"] <= 1.0 and 0.0 <= row["reward_mean"] <= 1.0
        # the engine scores the sampled tokens as the sampler did
        assert row["rollout/logprob_diff_max"] < 1e-3
        counts = [row[f"{kind}_count"] for kind in ("reward_correct", "reward_wrong", "reward_no_answer")]
        assert sum(counts) == 2 * 2
        # the step's profile: every phase timed, together no longer than the step
        phases = [row[f"timing_s/{phase}"] for phase in ("gen", "old_log_prob", "reward", "update_actor",
                                                          "update_weights")]
        assert all(value > 0 for value in phases) and sum(phases) <= row["seconds"]
    # held-out exact match before RL, after step 2 (--eval-every 2), and nowhere else
    assert "held_out_exact_match" not in rows[0] and 0.0 <= rows[1]["held_out_exact_match"] <= 1.0
    png = (run_dir / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert "| step | exact match |" in (run_dir / "table.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["mode"] == "all" and summary["config"]["temperature"] == 0.7
    assert [point["step"] for point in summary["held_out"]] == [0, 2]
    assert summary["eval_before"] == summary["held_out"][0] and summary["eval_after"] == summary["held_out"][-1]
    for point in summary["held_out"]:
        assert 0.0 <= point["answer_rate"] <= 1.0 and 0.0 <= point["exact_match_any_format"] <= 1.0
    before, after = summary["eval_before"]["exact_match"], summary["eval_after"]["exact_match"]
    assert summary["held_out_exact_match_gain"] == pytest.approx(after - before)
    # the closing summary line gives the held-out change; it and the per-step table say where the files are
    assert f"{before:.3f} before RL -> {after:.3f} after ({after - before:+.3f})" in result.stdout
    rates = summary["eval_before"]["answer_rate"], summary["eval_after"]["answer_rate"]
    assert f"responses with a graded answer {rates[0]:.3f} -> {rates[1]:.3f}" in result.stdout
    assert "exact match  mean reward  NTL loss  digit acc  held-out EM  seconds" in result.stdout
    assert str(run_dir / "metrics.jsonl") in result.stdout and str(run_dir / "curves.png") in result.stdout
    # the generated problems were written in verl's GSM8K format and read back from it
    assert (run_dir / "data" / "train.parquet").is_file()
    # complete: moved into place from two.incomplete, without its marker
    assert sorted(path.name for path in tmp_path.iterdir()) == ["two"] and not (run_dir / "INCOMPLETE.md").exists()


def test_ntl_term_lowers_the_ntl_loss_through_the_engine(tmp_path, monkeypatch):
    """A fixed batch whose responses hold answer digits; advantages 0, so only the NTL term can move the policy."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as the demo runs (see _run_demo)
    from ntl_demo import pipeline
    from ntl_demo.policy import build_policy, load_tokenizer
    from ntl_demo.train import target_ntl
    from ntl_demo.warmup import encode_prompt, encode_response
    from ntl_kernels import digit_targets, number_tokens

    tokenizer = load_tokenizer(None)
    numbers = number_tokens(tokenizer)
    digit_ids = numbers.ids
    model_dir = tmp_path / "policy"
    build_policy(None, seed=0, device="cpu", hidden_size=16, num_layers=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    problems = read_problems(write_parquet(generate_rows(2, seed=0, split="train"), tmp_path / "train.parquet"))
    prompts = [encode_prompt(tokenizer, p.messages) for p in problems]
    responses = [encode_response(tokenizer, p.solution) for p in problems]
    width = max(map(len, responses))
    padded = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in responses])
    targets = digit_targets(padded, digit_ids)
    targets[:, -1] = -100  # padding ids are not digits; keep the last column free of targets
    is_number = torch.isin(padded, digit_ids)
    zero_advantages = torch.zeros(padded.shape)

    def ntl_after_updates(ntl_coef: float, updates: int) -> list[float]:
        engine = pipeline.PolicyEngine(model_dir, numbers=numbers, lr=1e-2, ntl_coef=ntl_coef,
                                       ntl_method="was", max_token_len=4096, total_steps=updates, device="cpu")
        losses = []
        for _ in range(updates):
            old_log_probs, digit_log_probs = engine.old_log_probs(prompts, responses, 1.0)
            losses.append(target_ntl(digit_log_probs, targets, is_number, numbers, "was"))
            metrics = engine.update(prompts, responses, old_log_probs=old_log_probs, advantages=zero_advantages,
                                    ntl_targets=targets, temperature=1.0)
            assert math.isfinite(metrics["actor/ntl_loss"]) and metrics["actor/ntl_loss"] > 0
        losses.append(target_ntl(engine.old_log_probs(prompts, responses, 1.0)[1], targets, is_number, numbers, "was"))
        return losses

    with_ntl = ntl_after_updates(1.0, 3)
    assert all(later < earlier for earlier, later in zip(with_ntl, with_ntl[1:])), with_ntl
    assert with_ntl[-1] < 0.95 * with_ntl[0], with_ntl
    without_ntl = ntl_after_updates(0.0, 1)  # no advantage, no NTL term: nothing to learn from
    assert without_ntl[-1] == pytest.approx(without_ntl[0], abs=1e-6), without_ntl


# Per option, values that pass argparse's type but would fail later (in the policy, the data generator, the engine,
# the output folder, numpy's seeding) or run silently wrong: each must be a message naming the option, status 2.
BAD_ARGUMENTS = [
    (["--mode", "bogus"], "invalid choice: 'bogus'"),
    (["--tau", "0"], "--tau must be a positive finite number"),
    (["--tau", "-1.5"], "--tau must be a positive finite number"),
    (["--tau", "nan"], "--tau must be a positive finite number"),
    (["--model", "/no/such/checkpoint"], "--model /no/such/checkpoint: no Hugging Face checkpoint"),
    (["--data", "/no/such/file.parquet"], "--data /no/such/file.parquet: no such file"),
    (["--ntl-coef", "-1"], "--ntl-coef must be a finite number >= 0"),
    (["--ntl-coef", "inf"], "--ntl-coef must be a finite number >= 0"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", "-3"], "--steps must be >= 1"),
    (["--seed", "-1"], "--seed must be in [0, 2**32 - 1]"),
    (["--seed", str(2**32)], "--seed must be in [0, 2**32 - 1]"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--temperature", "0"], "--temperature must be a finite number >= 0.001"),
    (["--temperature", "1e-30"], "--temperature must be a finite number >= 0.001"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0.001"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "nan"], "--lr must be a positive finite number"),
    (["--adam-eps", "-1"], "--adam-eps must be a positive finite number"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    (["--prompts-per-step", "0"], "--prompts-per-step must be >= 1"),
    (["--group-size", "1"], "--group-size must be >= 2"),
    (["--group-size", "0"], "--group-size must be >= 2"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--max-new-tokens", "1024"], "--max-new-tokens must be < 1024"),
    (["--hidden-size", "0"], "--hidden-size must be >= 1"),
    (["--hidden-size", "12"], "--hidden-size must be a multiple of 8"),  # head size 3: rotary embedding fails
    (["--hidden-size", "20"], "--hidden-size must be a multiple of 8"),
    (["--hidden-size", "4"], "--hidden-size must be a multiple of 8"),
    (["--layers", "0"], "--layers must be >= 1"),
    (["--max-operand", "1"], "--max-operand must be >= 2"),  # the generator's subtraction draws from [2, N]
    (["--untagged-share", "2"], "--untagged-share must be in [0, 1]"),
    (["--untagged-share", "nan"], "--untagged-share must be in [0, 1]"),
    (["--eval-problems", "0"], "--eval-problems must be >= 1"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--name", "../elsewhere"], "--name must be a plain folder name"),
    (["--name", "a/b"], "--name must be a plain folder name"),
    (["--name", ".."], "--name must be a plain folder name"),
    (["--name", ""], "--name must be a plain folder name"),
    (["--name", "run.incomplete"], "--name must be a plain folder name"),
    (["--mode", "em", "--answer-credit", "distance"], "--answer-credit distance needs --mode final"),
    (["--model", "/no/such/model", "--tokenizer", "llama3"], "--tokenizer llama3 picks the tiny policy's tokenizer"),
    (["--data", "/no/such.parquet", "--answer-format", "boxed"], "--answer-format boxed shapes the generated"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_with_a_message(args, message, capsys, monkeypatch):
    def let_through(*unused):
        raise AssertionError(f"{args} passed the option check")

    monkeypatch.setattr(cli, "run_single", let_through)  # a value the check misses fails here, without training
    monkeypatch.setattr(cli, "run_compare", let_through)
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: None)  # process-wide; not in the test process
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_valued_option_has_bad_values_in_the_table():
    """The class, not the cases: an option added with a free value (not a flag, not argparse's choices) and no
    bad-value case in BAD_ARGUMENTS fails this test (--out: test_out_that_is_a_file_or_a_foreign_folder_is_refused)."""
    valued = {action.option_strings[0] for action in cli.build_parser()._actions
              if action.option_strings and action.nargs is None and action.choices is None}
    checked = {args[0] for args, _ in BAD_ARGUMENTS} | {"--out"}
    assert valued <= checked, sorted(valued - checked)


def test_hidden_sizes_the_cli_accepts_build_a_working_policy(tmp_path):
    """Every hidden size either fails the option check or gives a tiny policy that runs (rotary embedding, heads)."""
    from ntl_demo.policy import build_policy

    parser = cli.build_parser()
    accepted = []
    for hidden_size in range(1, 41):
        try:
            cli._check(parser, parser.parse_args(["--hidden-size", str(hidden_size), "--out", str(tmp_path)]))
        except SystemExit as exit_info:
            assert exit_info.code == 2
            continue
        accepted.append(hidden_size)
        model = build_policy(None, seed=0, device="cpu", hidden_size=hidden_size, num_layers=1)
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, model.config.vocab_size)
    assert accepted == [8, 16, 24, 32, 40]


def test_max_new_tokens_beyond_the_engine_micro_batch_fail_before_training(tmp_path):
    """verl cannot split a sequence: the longest prompt + --max-new-tokens must fit ``max_token_len`` tokens."""
    from ntl_demo.policy import load_tokenizer
    from ntl_demo.train import RunConfig, check_sequence_length
    from ntl_demo.warmup import encode_prompt

    problems = read_problems(write_parquet(generate_rows(20, seed=0, split="train"), tmp_path / "train.parquet"))
    tokenizer = load_tokenizer(None)
    room = RunConfig.max_token_len - max(len(encode_prompt(tokenizer, problem.messages)) for problem in problems)
    check_sequence_length(RunConfig(max_new_tokens=room), tokenizer, problems)  # fits exactly
    with pytest.raises(ValueError, match=rf"--max-new-tokens {room + 1}: .* use --max-new-tokens <= {room}$"):
        check_sequence_length(RunConfig(max_new_tokens=room + 1), tokenizer, problems)


def test_out_that_is_a_file_or_a_foreign_folder_is_refused(tmp_path, capsys):
    """The run folder replaces OUT/NAME when the run completes: nothing but an earlier run's output may be there."""
    (tmp_path / "file").write_text("")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo run")
    checkpoint = tmp_path / "old" / "policy_init"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (tmp_path / "old" / "summary.json").write_text("{}")
    parser = cli.build_parser()
    for args, message in ((["--out", str(tmp_path / "file")], "--out " + str(tmp_path / "file") + ": not a folder"),
                          (["--out", str(tmp_path), "--name", "mine"], "is not a demo run's output"),
                          (["--out", str(tmp_path), "--name", "old", "--model", str(checkpoint)],
                           f"--model {checkpoint} lies in {tmp_path / 'old'}, which this run replaces")):
        with pytest.raises(SystemExit) as exit_info:
            cli._check(parser, parser.parse_args(args))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is missing")
def test_cuda_without_cuda_is_a_message_not_a_traceback():
    result = _run_demo("--device", "cuda", timeout=120)
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr and "Traceback" not in result.stderr


def test_generated_problems_are_verl_gsm8k_rows(tmp_path):
    rows = generate_rows(50, seed=3, split="test")
    path = write_parquet(rows, tmp_path / "test.parquet")
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    for row, problem in zip(frame.to_dict("records"), read_problems(path)):
        assert row["data_source"] == "openai/gsm8k" and row["ability"] == "math"
        question = row["extra_info"]["question"]
        assert list(row["prompt"]) == [{"role": "user", "content": f"{question} {INSTRUCTION}"}]
        assert row["reward_model"]["style"] == "rule"
        assert row["extra_info"]["split"] == "test"
        solution = row["extra_info"]["answer"]
        expression, answer = solution.split("\n#### ")
        assert answer == row["reward_model"]["ground_truth"] == problem.ground_truth
        assert eval(expression.split(" = ")[0]) == int(answer) == int(expression.split(" = ")[1])
        assert exact_match(solution, answer) == 1.0
    assert generate_rows(50, seed=3, split="test") == rows  # reproducible


def test_llama3_tokenizer_and_boxed_answers_run_end_to_end(tmp_path):
    """The embedded demo on Llama-3's real tokenizer (1,110 number tokens, a tiny Llama) and MATH-style problems
    answered in \\boxed{} (verl's MATH data source: the reward and the metrics read the box)."""
    result = _run_demo("--steps", "1", "--tokenizer", "llama3", "--answer-format", "boxed", "--out", str(tmp_path),
                       "--name", "llama3", *TINY, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "llama3"
    (row,) = report.read_metrics(run_dir / "metrics.jsonl")
    assert row["rollout/logprob_diff_max"] < 1e-3 and math.isfinite(row["actor/pg_loss"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["tokenizer"] == "llama3" and summary["config"]["answer_format"] == "boxed"
    frame = pd.read_parquet(run_dir / "data" / "train.parquet")
    assert set(frame["data_source"]) == {ANSWER_FORMATS["boxed"].data_source}
    config = json.loads((run_dir / "policy_init" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 128_256


def test_boxed_problems_are_graded_in_their_box():
    rows = generate_rows(20, seed=0, split="test", answer_format="boxed")
    for row in rows:
        truth, solution = row["reward_model"]["ground_truth"], row["extra_info"]["answer"]
        assert row["data_source"] == "DigitalLearningGmbH/MATH-lighteval" and "\\boxed{}" in row["prompt"][0]["content"]
        assert solution.endswith(f"\\boxed{{{truth}}}.")
        assert exact_match(solution, truth, data_source=row["data_source"]) == 1.0
        assert exact_match(solution, truth) == 0.0  # the GSM8K rule reads no box
        assert digit_accuracy(solution, truth, row["data_source"]) == 1.0


def test_untagged_share_states_answers_without_the_marker():
    rows = generate_rows(400, seed=1, split="train", untagged_share=0.65)
    untagged = [row for row in rows if "####" not in row["extra_info"]["answer"]]
    assert 0.55 < len(untagged) / len(rows) < 0.75
    for row in untagged:
        truth = row["reward_model"]["ground_truth"]
        assert row["extra_info"]["answer"].endswith(f"\nThe answer is {truth}.")
        assert exact_match(row["extra_info"]["answer"], truth) == 0.0  # verl's GSM8K rule reads only ####
    with pytest.raises(ValueError, match="untagged_share must be in"):
        generate_rows(4, seed=0, split="train", untagged_share=1.5)


def test_exact_match_any_format_reads_the_last_number():
    assert exact_match("3 + 9 = 12\nThe answer is 12.", "12") == 0.0
    assert exact_match("3 + 9 = 12\nThe answer is 12.", "12", "flexible") == 1.0
    assert exact_match("3 + 9 = 12\nThe answer is 13.", "12", "flexible") == 0.0


def test_digit_accuracy_aligns_places():
    assert digit_accuracy("7 + 11 = 18\n#### 18", "18") == 1.0
    assert digit_accuracy("#### 19", "18") == 0.5
    assert digit_accuracy("#### 118", "18") == pytest.approx(2 / 3)
    assert digit_accuracy("#### 8", "18") == 0.5
    assert digit_accuracy("no answer", "18") == 0.0
    assert digit_accuracy("#### 18.0", "18") == 1.0


def test_compare_runs_every_variant_from_one_warm_up(tmp_path):
    result = _run_demo("--compare", "--seeds", "1", "--steps", "1", "--out", str(tmp_path), *TINY, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    compare_dir = tmp_path / "compare"
    assert (compare_dir / "compare.png").read_bytes().startswith(b"\x89PNG")
    table = (compare_dir / "compare.md").read_text()
    for label, settings in cli.COMPARE_VARIANTS:
        assert f"| {label} | 1 |" in table
        summary = json.loads((compare_dir / cli.compare_run_name(label, 0) / "summary.json").read_text())
        assert {key: summary["config"][key] for key in settings} == settings
        # every variant starts from the first one's warmed-up policy
        if label != cli.COMPARE_VARIANTS[0][0]:
            assert summary["config"]["warmup_steps"] == 0
            assert summary["config"]["model"] == str(compare_dir / "em-seed0" / "policy_init")
            assert Path(summary["config"]["model"], "model.safetensors").is_file()  # where it is once complete
    assert sorted(path.name for path in tmp_path.iterdir()) == ["compare"]  # no compare.incomplete left


def test_compare_report_plot_and_table(tmp_path):
    def seed_run(level):
        rows = [{"step": s, "exact_match": level * s, "digit_acc": 0.5 + level, "reward_mean": level,
                 "reward_correct": 1.0, "reward_correct_count": 2, "reward_wrong": level, "reward_wrong_count": 1,
                 "reward_no_answer": None, "reward_no_answer_count": 0} for s in (1, 2, 3)]
        held_out = [{"step": 0, "exact_match": 0.25, "digit_acc": 0.5},
                    {"step": 3, "exact_match": 0.25 + level, "digit_acc": 0.5 + level}]
        return {"rows": rows, "held_out": held_out}

    runs = {"final": [seed_run(0.1), seed_run(0.2), seed_run(0.3)], "em": [seed_run(0.0), seed_run(0.0)]}
    png = report.plot_compare(runs, tmp_path / "compare.png", "test")
    assert png.read_bytes().startswith(b"\x89PNG")
    lines = report.compare_markdown(runs, last_steps=1).splitlines()
    # final: change 0.1, 0.2, 0.3 -> mean 0.2, sd 0.1, 95% t-interval 0.2 +- 4.303 * 0.1 / sqrt(3)
    half = 4.303 * 0.1 / math.sqrt(3)
    assert lines[2].startswith(f"| final | 3 | 0.250 [0.250, 0.250] | 0.450 [{0.45 - half:.3f}, {0.45 + half:.3f}] "
                               f"| +0.200 [{0.2 - half:+.3f}, {0.2 + half:+.3f}] |")
    assert lines[3].startswith("| em | 2 | 0.250 [0.250, 0.250] | 0.250 [0.250, 0.250] | +0.000 [+0.000, +0.000] |")
    # what the reward paid: correct answers 1.0, wrong ones the level, no response without an answer
    assert lines[-2] == f"| final | 1.000 [1.000, 1.000] | 0.200 [{0.2 - half:.3f}, {0.2 + half:.3f}] | - |"


def test_mean_interval_is_students_t():
    assert report.mean_interval([]) is None and report.mean_interval([None]) is None
    assert report.mean_interval([0.5]) == (0.5, 0.5, 0.5)
    mean, low, high = report.mean_interval([1.0, 2.0, 3.0, None])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 / math.sqrt(3)) and mean - low == high - mean
    assert report.format_interval([0.1, 0.3], signed=True) == "+0.200 [-1.071, +1.471]"
