"""The verl version matrix: NTL on every supported verl release, path and trainer mode, on the CPU.

For each release (``MATRIX``) it takes an environment (the project's ``.venv`` for the release the project pins,
``requirements/constraints.txt``; for the others a throwaway one under ``.verl-matrix/<release>/`` built from
``requirements/verl-matrix/<release>.txt``, rebuilt only when that file changes; pip's cache is shared), then runs
in it

- the in-process integration tests of that release (``Release.tests``: pytest, the release's own verl);
- the start-up check on the settings that must be refused there (``Release.refused``: composed with that release's
  hydra config, no Ray), recording verl's message;
- verl's real ``python -m verl.trainer.main_ppo`` (``tests/e2e/run.py``, case ``matrix_final_grpo``: Final-answer
  NTL, GRPO, 2 steps, the CPU harness) on each path and trainer mode the release offers (``Release.runs``), checking
  from the run's metrics that the NTL reward reached the advantage and the NTL loss the update
  (``tests/e2e/metrics.py``).

It writes ``bench/results/verl_matrix.md`` (release x path x trainer mode -> passed / refused / failed / not run on
the CPU, with times) and the README's support table, and exits 1 when an outcome differs from the expected one.

    python -m tests.verl_matrix                      # every release (what `make verl-matrix` and CI run)
    python -m tests.verl_matrix --releases 0.8.0     # one release; the results file keeps the others' rows
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_ROOT = REPO / ".verl-matrix"
RESULTS = REPO / "bench" / "results" / "verl_matrix.md"
README = REPO / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- verl-matrix:begin -->", "<!-- verl-matrix:end -->"
PROJECT_RELEASE = "0.9.1"  # the release requirements/constraints.txt pins: the project's own .venv
MATRIX_CASE = "matrix_final_grpo"


@dataclasses.dataclass(frozen=True)
class Run:
    """One real ``main_ppo`` run: the path and trainer mode it exercises, its overrides, whether it can run here."""

    path: str
    mode: str
    overrides: tuple[str, ...] = ()
    not_on_cpu: str = ""  # why verl cannot run this on the CPU (then it is recorded, not run)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Settings the start-up check must refuse on this release, and the setting its message must name."""

    path: str
    mode: str
    overrides: tuple[str, ...]
    names: str


@dataclasses.dataclass(frozen=True)
class Release:
    version: str
    tests: tuple[str, ...]  # pytest arguments of the release's integration tests
    runs: tuple[Run, ...]
    refused: tuple[Refusal, ...] = ()
    tests_label: tuple[str, str] = ("in-process integration tests", "")  # (path, mode) columns of the tests' row


# the engine against the release's own FSDPEngineWithLMHead with NTL off (outputs, gradients: zero_coefficient) and
# on (only the digit outputs added), and its digits against a plain Hugging Face forward
ENGINE_TESTS = ("tests/test_verl_engine.py", "tests/test_verl_loss.py")
ENGINE_SELECTION = ("without_request or verls_own_functions or zero_coefficient or planted_digit_distribution "
                    "or hugging_face")
RAY_TRAINER_TESTS = ("tests/test_ray_trainer.py",)
MATRIX = (
    Release("0.7.1", tests=("tests/test_legacy_actor.py", *RAY_TRAINER_TESTS),
            runs=(Run("legacy workers (DataParallelPPOActor)", "main_ppo (RayPPOTrainer)"),),
            refused=(Refusal("engine workers", "main_ppo (RayPPOTrainer)",
                             ("trainer.use_legacy_worker_impl=disable",), "trainer.use_legacy_worker_impl"),)),
    Release("0.8.0", tests=(*RAY_TRAINER_TESTS, *ENGINE_TESTS, "-k", f"test_ray_trainer or {ENGINE_SELECTION}"),
            runs=(Run("engine workers", "main_ppo (RayPPOTrainer)"),)),
    Release("0.9.0", tests=(*ENGINE_TESTS, "-k", ENGINE_SELECTION),
            runs=(Run("engine workers", "v1 ntl (sync)"),)),
    # the project's own release: `pytest tests` runs its in-process tests; its main_ppo suite (tests/e2e: the sync
    # `ntl` mode with All-tokens PPO, GRPO + reference KL + dynamic batch size on 1 and 2 ranks, start-up refusals)
    # runs here, once, as this release's sync row
    Release("0.9.1", tests=("tests/e2e",),
            tests_label=("engine workers", "v1 ntl (sync): tests/e2e main_ppo suite (PPO, GRPO, 2 ranks, refusals)"),
            runs=(Run("engine workers", "v1 ntl_colocate_async", ("trainer.v1.trainer_mode=ntl_colocate_async",)),
                  Run("engine workers", "v1 ntl_separate_async", ("trainer.v1.trainer_mode=ntl_separate_async",),
                      not_on_cpu="separate_async needs a checkpoint engine other than naive (nccl, nixl, mooncake: "
                                 "GPU transports) to move weights to its standalone rollout"),
                  Run("engine workers", "main_ppo_v0 (trainer.use_v1=false)", ("trainer.use_v1=false",))),
            refused=(Refusal("engine workers", "v1 sync", ("trainer.v1.trainer_mode=sync",),
                             "trainer.v1.trainer_mode=ntl"),
                     Refusal("engine workers", "v1 colocate_async", ("trainer.v1.trainer_mode=colocate_async",),
                             "trainer.v1.trainer_mode=ntl_colocate_async"),
                     Refusal("engine workers", "bypass_mode (no old_log_prob pass)",
                             ("algorithm.rollout_correction.bypass_mode=true",),
                             "algorithm.rollout_correction.bypass_mode"))),
)


@dataclasses.dataclass
class Outcome:
    release: str
    path: str
    mode: str
    status: str  # passed | refused | failed | not run on CPU
    seconds: float
    detail: str = ""
    expected: bool = True


def environment(version: str) -> Path:
    """The python of ``version``'s environment, built from its constraints file when missing or out of date."""
    if version == PROJECT_RELEASE:
        return Path(sys.executable)
    constraints = REPO / "requirements" / "verl-matrix" / f"{version}.txt"
    root = ENV_ROOT / version
    stamp = root / ".installed"
    digest = hashlib.sha256(constraints.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return root / "bin" / "python"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    # the file pins every package: no resolution; no byte-compiling of all of them (the runs compile what they import)
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "-r",
                    str(constraints)], check=True)
    stamp.write_text(digest)
    return root / "bin" / "python"


def timed_environment(version: str) -> tuple[Path, float]:
    start = time.monotonic()
    return environment(version), time.monotonic() - start


def run_in(python: Path, args: list[str], log: Path, timeout_s: float) -> tuple[int, float]:
    """Run ``python args`` from the repository root (the tests' import path); (exit code, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    with open(log, "w") as output:
        try:
            code = subprocess.run([str(python), *args], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                  timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.monotonic() - start


def tail(log: Path, lines: int = 3) -> str:
    text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " / ".join(text[-lines:])[-400:]


def check_tests(release: Release, python: Path, workdir: Path) -> list[Outcome]:
    if not release.tests:
        return []
    log = workdir / "tests.log"
    code, seconds = run_in(python, ["-m", "pytest", *release.tests, "-q", "-p", "no:cacheprovider"], log, 2400)
    path, mode = release.tests_label
    return [Outcome(release.version, path, mode or " ".join(release.tests), "passed" if code == 0 else "failed",
                    seconds, tail(log, 1))]


REFUSAL_PROBE = """
import json, sys
from tests.gsm8k_scripts import SCRIPTS
from tests.e2e.run import release_script_overrides, merge_overrides
from verl_integration.startup import check_ntl_reaches_training
from hydra import compose, initialize_config_dir
import verl, os
import verl_integration.plugin
config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
with initialize_config_dir(config_dir=config_dir, version_base=None):
    config = compose(config_name="ppo_trainer", overrides=merge_overrides(
        release_script_overrides(SCRIPTS["final_answer"]), json.loads(sys.argv[1])))
try:
    check_ntl_reaches_training(config)
    print("NOT REFUSED")
except ValueError as error:
    print("REFUSED:", error)
"""


def check_refusal(release: Release, refusal: Refusal, python: Path, workdir: Path) -> Outcome:
    log = workdir / f"refusal-{len(list(workdir.glob('refusal-*')))}.log"
    code, seconds = run_in(python, ["-c", REFUSAL_PROBE, json.dumps(list(refusal.overrides))], log, 600)
    text = log.read_text(errors="replace")
    match = re.search(r"^REFUSED: (.*)$", text, re.MULTILINE)
    refused = code == 0 and match is not None and refusal.names in match.group(1)
    detail = match.group(1).split(". This run asks for NTL")[0] if match else tail(log)
    return Outcome(release.version, refusal.path, refusal.mode, "refused" if refused else "failed", seconds,
                   detail, expected=refused)


def check_run(release: Release, run: Run, python: Path, workdir: Path) -> Outcome:
    if run.not_on_cpu:
        return Outcome(release.version, run.path, run.mode, "not run on CPU", 0.0, run.not_on_cpu)
    name = re.sub(r"\W+", "_", f"{run.path}_{run.mode}").strip("_")
    rundir = workdir / name
    shutil.rmtree(rundir, ignore_errors=True)
    code, seconds = run_in(python, ["-m", "tests.e2e.run", "--case", MATRIX_CASE, "--workdir", str(rundir),
                                    *run.overrides], workdir / f"{name}.log", 1500)
    from tests.e2e.metrics import check_ntl_reached_training, read_steps
    from tests.e2e.run import NTL_LOSS_COEF, TOTAL_STEPS

    detail = ""
    if code == 0:
        try:
            check_ntl_reached_training(read_steps(rundir / "metrics.jsonl"), expected_steps=TOTAL_STEPS,
                                       loss_coef=NTL_LOSS_COEF)
            steps = read_steps(rundir / "metrics.jsonl")[TOTAL_STEPS]
            detail = (f"step {TOTAL_STEPS}: reward/ntl_score {steps['reward/ntl_score']:.3f} = critic/score/mean, "
                      f"actor/ntl_loss {steps['actor/ntl_loss']:.3f}")
        except (AssertionError, OSError) as error:
            code, detail = 1, str(error).splitlines()[-1]
    else:
        detail = tail(rundir / "main_ppo.log") if (rundir / "main_ppo.log").exists() else tail(workdir / f"{name}.log")
    return Outcome(release.version, run.path, run.mode, "passed" if code == 0 else "failed", seconds, detail,
                   expected=code == 0)


def check_release(release: Release, python_future: concurrent.futures.Future) -> list[Outcome]:
    """Every check of ``release`` in its environment (``python_future``: its python, being built meanwhile)."""
    workdir = ENV_ROOT / "runs" / release.version
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        python, seconds = python_future.result()
    except subprocess.CalledProcessError as error:
        return [Outcome(release.version, "environment", "", "failed", 0.0, str(error), False)]
    setup = Outcome(release.version, "environment", f"requirements/verl-matrix/{release.version}.txt"
                    if release.version != PROJECT_RELEASE else "requirements/constraints.txt (the project's .venv)",
                    "passed", seconds)
    outcomes = [setup, *check_tests(release, python, workdir)]
    outcomes += [check_refusal(release, refusal, python, workdir) for refusal in release.refused]
    outcomes += [check_run(release, run, python, workdir) for run in release.runs]
    for outcome in outcomes:
        print(f"[verl-matrix] {outcome.release} | {outcome.path} | {outcome.mode} | {outcome.status} | "
              f"{outcome.seconds:.0f} s | {outcome.detail}", flush=True)
    return outcomes


ROW = re.compile(r"^\| (\d+\.\d+\.\d+) \| (.*) \| (.*) \| (.*) \| (.*) \| (.*) \|$")


def previous_outcomes() -> list[Outcome]:
    """The rows of the results file (kept for the releases this run does not check)."""
    if not RESULTS.exists():
        return []
    outcomes = []
    for line in RESULTS.read_text().splitlines():
        match = ROW.match(line)
        if match:
            release, path, mode, status, seconds, detail = match.groups()
            outcomes.append(Outcome(release, path, mode, status, float(seconds.split()[0] or 0), detail))
    return outcomes


def results_table(outcomes: list[Outcome]) -> str:
    lines = ["| verl | path | trainer mode / check | result | time | detail |", "|---|---|---|---|---|---|"]
    for outcome in outcomes:
        detail = outcome.detail.replace("|", "/").replace("\n", " ")
        lines.append(f"| {outcome.release} | {outcome.path} | {outcome.mode} | {outcome.status} | "
                     f"{outcome.seconds:.0f} s | {detail} |")
    return "\n".join(lines)


def support_table(outcomes: list[Outcome]) -> str:
    """The README's table: release x path x trainer mode -> supported / refused at start-up / not on CPU."""
    words = {"passed": "supported (CPU run passed)", "refused": "refused at start-up",
             "not run on CPU": "supported, not run on CPU", "failed": "FAILED in the matrix"}
    lines = ["| verl | path | trainer mode | NTL | backend |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        if outcome.path in ("environment", "in-process integration tests"):
            continue
        lines.append(f"| {outcome.release} | {outcome.path} | {outcome.mode} | {words[outcome.status]} | FSDP |")
    return "\n".join(lines)


def write_results(outcomes: list[Outcome], seconds: float) -> None:
    RESULTS.write_text(
        "# verl version matrix (`make verl-matrix`, `python -m tests.verl_matrix`)\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; python {platform.python_version()}; "
        f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {seconds / 60:.1f} min for the releases "
        "checked in this run. Each release runs in its own environment (requirements/verl-matrix/). A main_ppo row "
        "passes when verl's real `python -m verl.trainer.main_ppo` ran 2 GRPO steps with Final-answer NTL on the CPU "
        "and its metrics show the NTL reward in the advantage and the NTL loss in the update "
        "(tests/e2e/metrics.py); a refused row when the start-up check refused the settings naming the key.\n\n"
        + results_table(outcomes) + "\n")
    readme = README.read_text()
    if TABLE_BEGIN in readme and TABLE_END in readme:
        head, rest = readme.split(TABLE_BEGIN, 1)
        _, tail_text = rest.split(TABLE_END, 1)
        README.write_text(f"{head}{TABLE_BEGIN}\n{support_table(outcomes)}\n{TABLE_END}{tail_text}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", default=",".join(release.version for release in MATRIX))
    args = parser.parse_args(argv)
    chosen = args.releases.split(",")
    unknown = sorted(set(chosen) - {release.version for release in MATRIX})
    if unknown:
        parser.error(f"--releases: unknown {unknown}; the matrix has {[release.version for release in MATRIX]}")
    start = time.monotonic()
    releases = [release for release in MATRIX if release.version in chosen]
    # the throwaway environments build one after another in the background while the project's release (whose
    # environment exists) runs its checks first, so their building overlaps its main_ppo runs
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as builder:
        pythons = {release.version: builder.submit(timed_environment, release.version) for release in releases}
        by_release = {release.version: check_release(release, pythons[release.version])
                      for release in sorted(releases, key=lambda release: release.version != PROJECT_RELEASE)}
    outcomes = [outcome for release in releases for outcome in by_release[release.version]]
    kept = [outcome for outcome in previous_outcomes() if outcome.release not in chosen]
    order = [release.version for release in MATRIX]
    write_results(sorted(kept + outcomes, key=lambda outcome: order.index(outcome.release)),
                  time.monotonic() - start)
    unexpected = [outcome for outcome in outcomes if not outcome.expected or outcome.status == "failed"]
    for outcome in unexpected:
        print(f"[verl-matrix] UNEXPECTED: {outcome}", file=sys.stderr)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
