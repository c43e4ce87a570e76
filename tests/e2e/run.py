"""Run verl's real ``python -m verl.trainer.main_ppo`` on the CPU with the project's GSM8K scripts' overrides.

One run = the overrides a script prints (``NTL_PRINT_OVERRIDES=1``, so the tests run what users run) with a tiny
model, generated data and small batches substituted, plus the CPU overrides (``cpu_overrides``), what the running
verl release needs (``release_overrides``) and the case's own ones; every process imports
``tests.e2e.cpu_harness`` (``VERL_USE_EXTERNAL_MODULES``). The run uses the verl of the Python that runs this module
(``sys.executable``). The run's metrics land in ``<workdir>/metrics.jsonl`` (verl's file logger), its output in
``<workdir>/main_ppo.log``.

    python -m tests.e2e.run --case grpo_ref_kl_dynamic_bsz --workdir /tmp/e2e   # one case by hand
    <venv>/bin/python -m tests.e2e.run --case matrix_final_grpo --workdir /tmp/e2e   # that venv's verl
    python -m tests.e2e.run --case matrix_final_grpo --plain --workdir /tmp/e2e   # plain verl: no NTL plug-in
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.e2e import PLAIN_ENV
from tests.e2e.hf_rollout import SCRIPT_ENV, ResponseScript
from tests.gsm8k_scripts import REPO, SCRIPTS, script_overrides

HARNESS = "tests.e2e.cpu_harness"
NTL_LOSS_COEF = 0.5  # large enough that actor/loss visibly contains the NTL term
TRAIN_PROMPTS, VAL_PROMPTS = 16, 4
PROMPTS_PER_STEP = 4
TOTAL_STEPS = 2
LOG_FILE, METRICS_FILE = "main_ppo.log", "metrics.jsonl"  # in the run's workdir


@dataclasses.dataclass(frozen=True)
class Case:
    """One end-to-end run: a GSM8K script, the number of (fake) GPUs = data-parallel ranks, extra overrides."""

    name: str
    script: str  # a key of tests.gsm8k_scripts.SCRIPTS
    n_gpus: int = 1
    overrides: tuple[str, ...] = ()


GRPO_OVERRIDES = (
    "algorithm.adv_estimator=grpo",
    "actor_rollout_ref.rollout.n=2",  # each prompt's group: one correct and one wrong scripted solution
    "actor_rollout_ref.actor.use_kl_loss=true",
    "actor_rollout_ref.actor.kl_loss_coef=0.01",
    "actor_rollout_ref.actor.use_dynamic_bsz=true",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=300",  # a few sequences per micro-batch
    "actor_rollout_ref.actor.optim.lr=1e-3",  # the actor leaves the reference at step 1: a non-zero KL at step 2
)

CASES = {
    case.name: case
    for case in (
        Case("all_tokens", "all_tokens"),
        Case("final_answer", "final_answer"),
        Case("grpo_ref_kl_dynamic_bsz", "all_tokens", overrides=GRPO_OVERRIDES),
        # one rollout server for both ranks (tensor parallel 2 = one replica): the same scripted responses as 1 rank
        Case("grpo_2_ranks", "all_tokens", n_gpus=2,
             overrides=GRPO_OVERRIDES + ("actor_rollout_ref.rollout.tensor_model_parallel_size=2",)),
        # verl's DataProto trainer (RayPPOTrainer, main_ppo_v0) built as NTLRayPPOTrainer by the plug-in
        # the verl matrix's case, run on every release (tests/e2e/run.py under each release's Python)
        Case("matrix_final_grpo", "final_answer", overrides=GRPO_OVERRIDES),
    )
}


@dataclasses.dataclass(frozen=True)
class Inputs:
    model_dir: Path
    data_dir: Path
    rollout_script: Path


@dataclasses.dataclass(frozen=True)
class RunResult:
    returncode: int
    wall_s: float
    peak_memory_gb: float  # the run's memory at its highest: proportional set size summed over all its processes
    workdir: Path

    @property
    def log(self) -> Path:
        return self.workdir / LOG_FILE

    @property
    def metrics(self) -> Path:
        return self.workdir / METRICS_FILE

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wrong_answer(solution: str) -> str:
    """The worked solution with its final answer off by one (its other digits unchanged)."""
    body, answer = solution.rsplit("#### ", 1)
    return f"{body}#### {int(answer) + 1}"


def prepare_inputs(root: Path) -> Inputs:
    """A tiny Qwen2 with the Qwen2.5 tokenizer, GSM8K-format train/test parquets and the rollout script."""
    from ntl_demo.data import generate_rows, write_parquet
    from tests.verl_cpu import write_tiny_model

    root.mkdir(parents=True, exist_ok=True)
    model_dir = Path(write_tiny_model(str(root / "model")))
    splits = {"train": generate_rows(TRAIN_PROMPTS, seed=0, split="train"),
              "test": generate_rows(VAL_PROMPTS, seed=0, split="test")}
    solutions = {}
    for split, rows in splits.items():
        write_parquet(rows, root / "data" / f"{split}.parquet")
        for row in rows:
            correct = row["extra_info"]["answer"]
            wrong = wrong_answer(correct)
            # even rows start correct, odd rows wrong: with rollout.n=1 half the batch is right
            solutions[row["extra_info"]["question"]] = [correct, wrong] if row["extra_info"]["index"] % 2 == 0 \
                else [wrong, correct]
    script = ResponseScript(solutions).save(root / "rollout_script.json")
    return Inputs(model_dir=model_dir, data_dir=root / "data", rollout_script=script)


def override_key(override: str) -> str:
    match = re.match(r"^(?:\+\+|\+|~)?([^=]+)=", override)
    if match is None:
        raise ValueError(f"not a hydra key=value override: {override!r}")
    return match.group(1)


def merge_overrides(base: list[str], changes: list[str]) -> list[str]:
    """``base`` with each of ``changes`` replacing the entry for the same key (keeping its ``+`` prefix), or
    appended when ``base`` has no such key."""
    merged = list(base)
    for change in changes:
        key = override_key(change)
        positions = [i for i, entry in enumerate(merged) if override_key(entry) == key]
        if positions:
            prefix = re.match(r"^(\+\+|\+|~)?", merged[positions[0]]).group(0)
            merged[positions[0]] = prefix + change.lstrip("+")
        else:
            merged.append(change)
    return merged


def release_overrides(verl_version: str, n_gpus: int = 1) -> tuple[str, ...]:
    """The one place where the run's overrides depend on the verl release (``verl_version``, e.g. "0.8.0") of a run
    on ``n_gpus`` fake GPUs. (The scripts choose the trainer settings per release line themselves.)"""
    release = tuple(int(part) for part in verl_version.split(".")[:2])
    if release == (0, 9):
        return (
            "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_DEVICE=cuda",  # the engine registry has no "cpu"
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",  # each unit is a ~0.5 GB process
        )
    if release in ((0, 8), (0, 7)):
        # without a platform verl names the device "cpu", and its worker groups' placement groups ask Ray for a
        # resource of that name, one per fake GPU
        return (f"+ray_kwargs.ray_init.resources.cpu={n_gpus}",)
    raise ValueError(f"tests/e2e/run.py knows verl 0.7, 0.8 and 0.9 runs, not verl {verl_version}")


# what a plain verl run leaves out of a script's overrides: the plug-in, the NTL trainer mode, NTL's settings, reward
PLAIN_DROPPED_KEY_PREFIXES = ("actor_rollout_ref.model.external_lib", "trainer.v1.trainer_mode", "ntl.",
                              "reward.custom_reward_function.")


def without_keys(overrides: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """``overrides`` less the entries whose key starts with one of ``prefixes``."""
    return [entry for entry in overrides if not override_key(entry).startswith(prefixes)]


def cpu_overrides(inputs: Inputs, workdir: Path, ray_dir: Path, n_gpus: int) -> list[str]:
    """What verl needs to run on the CPU without code (the code is in cpu_harness), plus a small run; the same on
    every release (what differs: ``release_overrides``)."""
    env_vars = "+ray_kwargs.ray_init.runtime_env.env_vars"
    return [
        # CPU: the harness's platform and rollout, fake GPUs so Ray schedules verl's GPU workers, fsdp2 (FSDP1 needs
        # CUDA), sdpa attention (no flash-attn), no torch.compile
        "trainer.device=cpu",
        f"+ray_kwargs.ray_init.num_gpus={n_gpus}",
        "+ray_kwargs.ray_init.num_cpus=16",  # Ray's bookkeeping only: each verl actor asks for a CPU
        "+ray_kwargs.ray_init.include_dashboard=false",
        "+ray_kwargs.ray_init.object_store_memory=500000000",
        f"+ray_kwargs.ray_init._temp_dir={ray_dir}",
        f"{env_vars}.VERL_USE_EXTERNAL_MODULES={HARNESS}",
        f"{env_vars}.{SCRIPT_ENV}={inputs.rollout_script}",
        f"{env_vars}.VERL_FILE_LOGGER_PATH={workdir / METRICS_FILE}",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "critic.strategy=fsdp2",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.use_torch_compile=false",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        "data.dataloader_num_workers=0",
        # small: 4 prompts a step, one PPO mini-batch, 2 micro-batches, 2 steps, validation and a checkpoint at the end
        f"data.train_batch_size={PROMPTS_PER_STEP}",
        "data.max_prompt_length=128",
        "data.max_response_length=48",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS_PER_STEP}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "critic.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        f"trainer.total_training_steps={TOTAL_STEPS}",
        f"trainer.test_freq={TOTAL_STEPS}",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={workdir / 'checkpoints'}",
    ]


def installed_verl_version() -> str:
    """The version of the verl that ``sys.executable`` (the Python running this module) imports."""
    return importlib.metadata.version("verl")


def release_script_overrides(script: Path, verl_version: str | None = None, plain: bool = False,
                             **env: str) -> list[str]:
    """The overrides ``script`` prints (``env``: its variables, N_GPUS included) as the verl release ``verl_version``
    (default: the installed verl) takes them: its own overrides (``release_overrides``) merged in. ``plain``: without
    NTL (the script's plug-in and NTL settings left out)."""
    release = release_overrides(verl_version or installed_verl_version(), int(env.get("N_GPUS", 1)))
    script = script_overrides(script, **env)
    return merge_overrides(without_keys(script, PLAIN_DROPPED_KEY_PREFIXES) if plain else script, list(release))


def main_ppo_command(case: Case, inputs: Inputs, workdir: Path, ray_dir: Path, extra: list[str] = (),
                     plain: bool = False) -> list[str]:
    """``python -m verl.trainer.main_ppo`` with the case's script's overrides for the installed verl
    (``release_script_overrides``), the CPU ones, the case's, ``extra``. ``plain``: without NTL (the harness is told
    so through ``PLAIN_ENV``)."""
    script = release_script_overrides(
        SCRIPTS[case.script], plain=plain, MODEL=str(inputs.model_dir), DATA_DIR=str(inputs.data_dir),
        NTL_LOSS_COEF=str(NTL_LOSS_COEF), N_GPUS=str(case.n_gpus),
    )
    ours = cpu_overrides(inputs, workdir, ray_dir, case.n_gpus) + list(case.overrides)
    if plain:
        ours.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.{PLAIN_ENV}='1'")  # quoted: Ray wants a str
    overrides = merge_overrides(script, ours)
    return [sys.executable, "-m", "verl.trainer.main_ppo", *merge_overrides(overrides, list(extra))]


def run_main_ppo(command: list[str], workdir: Path, timeout_s: float = 1200, plain: bool = False) -> RunResult:
    """Run ``command`` in ``workdir`` (the harness in every process; ``plain``: without the NTL plug-in), measure wall
    time and peak memory, and end every process it started (Ray's included) before returning."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # kernels: the CPU reference path
    env.update(VERL_USE_EXTERNAL_MODULES=HARNESS, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
               os.environ.get("PYTHONPATH")])), RAY_DEDUP_LOGS="0", HYDRA_FULL_ERROR="1")
    if plain:
        env[PLAIN_ENV] = "1"
    seen: dict[int, psutil.Process] = {}
    peak = 0
    start = time.monotonic()
    with open(workdir / LOG_FILE, "w") as output:
        driver = subprocess.Popen(command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            while driver.poll() is None:
                if time.monotonic() - start > timeout_s:
                    output.write(f"\n[tests.e2e.run] killed after {timeout_s:.0f} s\n")
                    break
                peak = max(peak, _memory_bytes(driver.pid, seen))
                time.sleep(1.0)
        finally:
            wall = time.monotonic() - start
            _end_processes(driver, seen)
    return RunResult(returncode=driver.returncode, wall_s=wall, peak_memory_gb=peak / 2**30, workdir=workdir)


def _memory_bytes(pid: int, seen: dict[int, psutil.Process]) -> int:
    """Memory of ``pid`` and all its descendants (proportional set size: pages shared by several processes, such as
    torch's libraries, are split between them rather than counted in each); remembers every process seen."""
    total = 0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in processes:
        seen.setdefault(process.pid, process)
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _end_processes(driver: subprocess.Popen, seen: dict[int, psutil.Process]) -> None:
    """Kill the driver's process group and every process of the run still alive (Ray's daemons and workers
    outlive a killed driver); only processes this run started, never other Ray clusters on the machine."""
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for process in seen.values():
        try:
            process.kill()  # psutil checks the pid still names the process it saw (no pid reuse)
        except psutil.NoSuchProcess:
            pass
    driver.wait()


def run_case(case: Case, workdir: Path, extra: list[str] = (), inputs: Inputs | None = None,
             plain: bool = False) -> RunResult:
    """Run ``case`` (plus ``extra`` overrides) in ``workdir`` on ``inputs`` (default: prepared in ``workdir``);
    ``plain``: as a plain verl run, without NTL."""
    inputs = inputs or prepare_inputs(workdir / "inputs")
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    try:
        return run_main_ppo(main_ppo_command(case, inputs, workdir, ray_dir, extra, plain), workdir, plain=plain)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--plain", action="store_true", help="plain verl: the case without the NTL plug-in and "
                        "settings (the CPU bridges alone)")
    parser.add_argument("overrides", nargs="*", help="more hydra overrides (they replace the same keys)")
    args = parser.parse_args(argv)
    # `timeout` and CI stop the launcher with SIGTERM: exit through run_main_ppo's cleanup (Ray outlives its driver)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run_case(CASES[args.case], args.workdir, args.overrides, plain=args.plain)
    print(f"verl {installed_verl_version()}{' (plain)' if args.plain else ''}: exit {result.returncode}, "
          f"{result.wall_s:.0f} s, peak memory {result.peak_memory_gb:.1f} GB, log {result.log}, "
          f"metrics {result.metrics}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
