"""The GPU-compile gate in CI: every launch the host code can make compiles for A100 (sm_80) and H100 (sm_90) with
the installed Triton, without register spills; the gate catches a compiler crash and spills; the CUDA path of the
ops reads no tensor value on the host.

The Triton interpreter that runs the other kernel tests never calls the GPU compiler, so these are the tests that
would have caught ntl_loss's forward failing to compile on an H100 (bench/results/gpu_compile.md). The compiling
runs in a subprocess without TRITON_INTERPRET (conftest.py sets it for this process).
"""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from ntl_kernels import digit_ntl_from_hidden, fused_logprob_entropy_ntl, ntl_loss
from ntl_kernels.launch import record_launches

ROOT = Path(__file__).resolve().parent.parent
KERNEL_MODULES = ("ntl_kernels.ntl_loss", "ntl_kernels.logprob_entropy_ntl")
TRITON_RELEASE = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
KERNELS = {"_ntl_forward_kernel", "_ntl_backward_kernel", "_forward_kernel", "_backward_kernel"}


def _compile_in_subprocess(*args, timeout=1800) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_every_launch_configuration_compiles_for_a100_and_h100_without_spills(tmp_path):
    out = tmp_path / "gate.json"
    run = _compile_in_subprocess("bench.gpu_compile", "--json", str(out))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert all(r["ok"] and r["spill_bytes"] == 0 for r in results)
    assert {r["target"] for r in results} == {"sm_80", "sm_90"}
    assert {r["configuration"].split("[")[0] for r in results} == KERNELS
    for dtype in ("fp32", "bf16", "fp16"):  # the logits' dtype appears in the label of every kernel's variants
        assert {r["configuration"].split("[")[0] for r in results if f"[{dtype}" in r["configuration"]} == KERNELS


def test_the_gate_reports_a_compiler_crash_and_register_spills():
    run = _compile_in_subprocess("tests.gpu_compile_cases", timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    cases = {json.loads(line)["configuration"].split("[")[0]: json.loads(line) for line in run.stdout.splitlines()
             if line.startswith('{"')}
    if TRITON_RELEASE < (3, 9):  # fixed upstream in 3.9, which compiles the old pattern
        assert not cases["sums_reduced_in_loop"]["ok"] and "PassManager" in cases["sums_reduced_in_loop"]["error"]
    assert cases["sums_reduced_after_loop"]["ok"]
    assert not cases["spilling"]["ok"] and "spills" in cases["spilling"]["error"]


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


@pytest.mark.parametrize("number_tokens", [10, 1_110], ids=["digits", "llama3_values_weights_squash"])
def test_the_cuda_path_reads_no_tensor_value_on_the_host(number_tokens):
    """Meta tensors have shapes but no values (``.item()``, ``.tolist()``, ``bool()`` raise on them): every public
    op running to its launches on them, forward and backward, shows the CUDA path has no host sync; also with a
    number-token set's values, weights and squash (its parameters computed on the device)."""
    rows, ids = 48, _meta(number_tokens, dtype=torch.long)

    def options(*leading):
        if number_tokens == 10:
            return {}
        return dict(number_values=_meta(number_tokens), squash_factor=50.0, weights=_meta(*leading))

    with record_launches() as launches:
        for reduction in ("none", "sample", "mean"):
            logits = _meta(4, rows // 4, 2000, dtype=torch.bfloat16).requires_grad_()
            ntl_loss(logits, _meta(4, rows // 4, dtype=torch.long), ids, reduction=reduction,
                     **options(4, rows // 4)).sum().backward()
        logits = _meta(rows, 2000, dtype=torch.bfloat16).requires_grad_()
        out = fused_logprob_entropy_ntl(logits, _meta(rows, dtype=torch.long), ids, temperature=_meta(rows),
                                        ntl_targets=_meta(rows, dtype=torch.long), method="was", **options(rows))
        (out.log_probs.sum() + out.entropy.sum() + out.digit_log_probs.sum() + out.ntl.sum()).backward()
        hidden = _meta(rows, 64).requires_grad_()
        digit_ntl_from_hidden(hidden, _meta(2000, 64), ids, ntl_targets=_meta(rows, dtype=torch.long),
                              **options(rows)).ntl.sum()
    assert {launch.kernel.fn.__name__ for launch in launches} == KERNELS


def test_every_kernel_is_launched_through_the_recordable_launch():
    """A kernel started as ``kernel[grid](...)`` would escape the gate: every launch goes through ``launch``."""
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        source = Path(module.__file__).read_text()
        assert not re.search(r"_kernel\[", source), f"{name} launches a kernel directly; use ntl_kernels.launch"
        kernels = {attr for attr in vars(module) if attr.endswith("_kernel")}
        assert kernels <= KERNELS, f"{name} has kernels the gate's tests do not know: {kernels - KERNELS}"


def test_triton_releases_that_fail_the_gate_are_refused_at_import():
    from ntl_kernels.launch import require_triton

    for supported in ("3.4.0", "3.5.1", "3.6.0", "3.9.0", "3.10.0"):
        require_triton(supported)
    with pytest.raises(ImportError, match=r"triton >= 3\.4, found triton 3\.3\.1"):
        require_triton("3.3.1")
