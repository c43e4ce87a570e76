"""The project's GSM8K scripts (examples/gsm8k/) as the tests use them: the hydra overrides the scripts print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "final_answer": REPO / "examples" / "gsm8k" / "train_gsm8k_qwen_ppo_ntl_final_answer.sh",
    "all_tokens": REPO / "examples" / "gsm8k" / "train_gsm8k_qwen_ppo_ntl.sh",
}


def script_overrides(script: Path, **env: str) -> list[str]:
    """The hydra overrides ``script`` passes to ``main_ppo`` (``NTL_PRINT_OVERRIDES=1``), one per entry.

    ``env`` sets the scripts' variables (MODEL, DATA_DIR, TAU, NTL_LOSS_COEF, N_GPUS). The script's ``python3`` is
    this interpreter (its verl decides the trainer settings the script prints).
    """
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    completed = subprocess.run(
        ["bash", str(script)], env={**os.environ, **env, "NTL_PRINT_OVERRIDES": "1", "PATH": path},
        capture_output=True, text=True, check=True,
    )
    return completed.stdout.splitlines()
