"""The GPU-compile gate: every Triton launch the host code can make, compiled ahead of time for A100 and H100.

    python -m bench.gpu_compile                       # all launch configurations, sm_80 and sm_90; exit 1 on failure
    python -m bench.gpu_compile --json out.json       # the same, with one record per (configuration, target)
    python -m bench.gpu_compile --versions 3.4.0,3.5.1,3.6.0,3.9.0   # the gate under each Triton release
                                                      # (-> bench/results/gpu_compile.md; `make gpu-compile`)

No GPU is needed: Triton's compiler runs to PTX and cubin for a named target, and the ``ptxas`` shipped in the
triton wheel reports registers and spills. The Triton interpreter that runs the CPU tests never invokes that compiler, so a kernel
can pass every CPU test and still fail to compile on a GPU; this gate is what catches it.

The configurations come from the host code itself: the public ops are called on ``meta`` tensors (shapes and
dtypes, no data) inside ``ntl_kernels.launch.record_launches()``, over row counts 1 .. 2^22, vocabularies 10 ..
262,144, the three dtypes, every method, reduction, gradient combination and layout class; for the 10 digits and
for Llama-3's 1,110 number tokens with values and weights (at Llama-3's and Qwen's vocabularies). Whatever the host code
launches is recorded, bound to a kernel signature exactly as a launch would bind it (Triton's own argument
specialisation: pointer dtypes, 16-divisible integers, integers equal to 1), deduplicated, and compiled. Run it
without ``TRITON_INTERPRET`` (under the interpreter there is no compiler to run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton

TARGETS = {"sm_80": 80, "sm_90": 90}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ROW_COUNTS = (1, 2, 3, 16, 17, 127, 128, 129, 1000, 16_384, 16_385, 32_768, 2**20, 2**22)
SAMPLE_SHAPES = ((1, 1), (3, 5), (8, 4096), (64, 512), (256, 2048), (16, 129), (4096, 1), (4096, 16), (2**14, 256),
                 (4, 2**20))
VOCAB_SIZES = (10, 16, 17, 1000, 4096, 32_000, 151_936, 152_064, 262_144)
QWEN_VOCAB = 151_936
LLAMA3_VOCAB = 128_256
LLAMA3_NUMBER_TOKENS = 1_110  # '0'..'9', '00'..'99', '000'..'999'


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


def _row_layouts(rows: int, vocab_size: int, dtype):
    """Logits views of about ``rows`` rows in each layout class the host code distinguishes: [N, V]; [B, T, V]
    whose rows merge; verl's padded slice [B, T + 1, V][:, :-1] (two strides); a view that needs three strides."""
    yield _meta(rows, vocab_size, dtype=dtype)
    if rows % 4 == 0 and rows >= 8:
        yield _meta(4, rows // 4, vocab_size, dtype=dtype)
        yield _meta(4, rows // 4 + 1, vocab_size, dtype=dtype)[:, :-1]
        if rows <= 2**14:
            yield _meta(4, 3, rows // 4, vocab_size, dtype=dtype)[:, ::2]


def _ntl_loss_calls():
    """Every layout x size x dtype x reduction (method is a runtime argument: all methods at a few sizes)."""
    from ntl_kernels import METHODS, REDUCTIONS, ntl_loss

    ids = _meta(10, dtype=torch.long)

    def call(logits, method="was", reduction="mean"):
        return lambda: _forward_backward(
            lambda x: ntl_loss(x, _meta(*x.shape[:-1], dtype=torch.long), ids, method=method, reduction=reduction),
            logits)

    for dtype in DTYPES:
        for vocab_size in VOCAB_SIZES:
            for rows in ROW_COUNTS:
                for logits in _row_layouts(rows, vocab_size, dtype):
                    for reduction in REDUCTIONS:
                        if reduction != "sample" or logits.dim() > 2:
                            yield call(logits, reduction=reduction)
            for batch, length in SAMPLE_SHAPES:
                yield call(_meta(batch, length, vocab_size, dtype=dtype), reduction="sample")
        for method in METHODS:
            for reduction in REDUCTIONS:
                for vocab_size in (10, QWEN_VOCAB):
                    yield call(_meta(4, 33, vocab_size, dtype=dtype), method, reduction)


def _actor_calls():
    """Every layout x size x dtype for the actor's usual gradient sets; every gradient set, method, temperature
    kind and in-place choice at a few vocabulary sizes; the hidden-state path."""
    from itertools import combinations

    from ntl_kernels import METHODS, digit_ntl_from_hidden

    ids = _meta(10, dtype=torch.long)
    gradient_sets = [s for k in range(5) for s in combinations(range(4), k)]  # of (log_probs, entropy, digits, ntl)
    usual = (((), False), ((0, 1, 2, 3), False), ((0, 1, 3), True))
    for dtype in DTYPES:
        for vocab_size in VOCAB_SIZES:
            for rows in ROW_COUNTS:
                for logits in _row_layouts(rows, vocab_size, dtype):
                    for grads, inplace in usual:
                        yield lambda lg=logits, g=grads, i=inplace: _fused_call(
                            lg, ids, "was", _meta(*lg.shape[:-1]), g, i)
            if vocab_size not in (10, 1000, QWEN_VOCAB):
                continue
            for method in (None, *METHODS):
                for temperature in (0.7, _meta(32)):
                    for grads in gradient_sets:
                        if method is None and 3 in grads:
                            continue
                        for inplace in (False, True):
                            yield lambda v=vocab_size, m=method, t=temperature, g=grads, i=inplace: _fused_call(
                                _meta(32, v, dtype=dtype), ids, m, t, g, i)
        for rows in ROW_COUNTS:  # verl's fused LM head: hidden states [N, d] and the LM-head weight [V, d]
            hidden, weight = _meta(rows, 896, dtype=dtype), _meta(QWEN_VOCAB, 896, dtype=dtype)
            yield lambda h=hidden, w=weight: _forward_backward(
                lambda x: digit_ntl_from_hidden(x, w, ids, ntl_targets=_meta(*x.shape[:-1], dtype=torch.long)).ntl, h)


def _number_token_calls():
    """Llama-3's number-token set (K = 1,110 tokens with values; weights and was's squash both on or both off) at
    Llama-3's and Qwen's vocabularies: every layout class, reduction, dtype and the actor's usual gradient sets
    at training row counts, every method at one size, the hidden-state path. Its block shapes (BLOCK_K = 2,048, one
    row per ntl_loss program) are the host code's own choice for K = 1,110."""
    from ntl_kernels import METHODS, REDUCTIONS, digit_ntl_from_hidden, ntl_loss

    ids, values = _meta(LLAMA3_NUMBER_TOKENS, dtype=torch.long), _meta(LLAMA3_NUMBER_TOKENS)

    def loss_call(logits, weighted, method="was", reduction="mean"):
        def op(x):
            leading = x.shape[:-1]
            return ntl_loss(x, _meta(*leading, dtype=torch.long), ids, method=method, reduction=reduction,
                            number_values=values, squash_factor=100.0 if weighted else None,
                            weights=_meta(*leading) if weighted else None)
        return lambda: _forward_backward(op, logits)

    usual = (((), False), ((0, 1, 2, 3), False), ((0, 1, 3), True))
    for dtype in DTYPES:
        for vocab_size in (LLAMA3_VOCAB, QWEN_VOCAB):
            for rows in (1, 2, 100, 16_384):  # one block; partial tiles of 2, 128, 1,024 (one row per block)
                for logits in _row_layouts(rows, vocab_size, dtype):
                    for weighted in (False, True):
                        for reduction in REDUCTIONS:
                            if reduction != "sample" or logits.dim() > 2:
                                yield loss_call(logits, weighted, reduction=reduction)
                        for grads, inplace in usual:
                            yield lambda lg=logits, g=grads, i=inplace, w=weighted: _fused_call(
                                lg, ids, "was", _meta(*lg.shape[:-1]), g, i, number_values=values,
                                squash_factor=100.0 if w else None, weights=_meta(*lg.shape[:-1]) if w else None)
            for batch, length in SAMPLE_SHAPES:
                for weighted in (False, True):
                    yield loss_call(_meta(batch, length, vocab_size, dtype=dtype), weighted, reduction="sample")
        for method in METHODS:
            for reduction in REDUCTIONS:
                yield loss_call(_meta(4, 33, LLAMA3_VOCAB, dtype=dtype), True, method, reduction)
        for rows in (1, 16_384):  # the fused LM head: hidden states [N, d], Llama-3.2-1B's LM head [V, 2048]
            hidden, weight = _meta(rows, 2048, dtype=dtype), _meta(LLAMA3_VOCAB, 2048, dtype=dtype)
            for weighted in (False, True):
                yield lambda h=hidden, w=weight, weighted=weighted: _forward_backward(
                    lambda x: digit_ntl_from_hidden(
                        x, w, ids, ntl_targets=_meta(*x.shape[:-1], dtype=torch.long), number_values=values,
                        weights=_meta(*x.shape[:-1]) if weighted else None).ntl, h)


def _forward_backward(op, tensor):
    """``op(tensor)`` and its backward, on a fresh leaf."""
    tensor = tensor.detach().requires_grad_()
    out = op(tensor)
    torch.autograd.backward(out, _meta(*out.shape))


def _fused_call(logits, ids, method, temperature, grads, inplace, **number_options):
    """``fused_logprob_entropy_ntl`` (NTL targets unless ``method`` is None; ``number_values`` / ``weights`` if
    given) and the backward of ``grads``, indices into its outputs."""
    from ntl_kernels import fused_logprob_entropy_ntl

    logits = logits.detach().requires_grad_(bool(grads))
    leading = logits.shape[:-1]
    targets = _meta(*leading, dtype=torch.long) if method is not None else None
    out = fused_logprob_entropy_ntl(logits, _meta(*leading, dtype=torch.long), ids, temperature=temperature, ntl_targets=targets,
             method=method or "nll", inplace_backward=inplace, **number_options)
    if grads:
        tensors = [out[i] for i in grads]
        torch.autograd.backward(tensors, [_meta(*t.shape) for t in tensors])


@dataclass(frozen=True)
class Configuration:
    """One compiled variant: a kernel with the signature, constexprs, specialisation attributes and options a
    recorded launch binds to."""

    kernel: str  # module:function
    signature: tuple
    constexprs: tuple
    attrs: tuple
    options: tuple

    @property
    def label(self) -> str:
        constexprs = ", ".join(f"{name}={value}" for name, value in self.constexprs)
        dtypes = sorted({t.lstrip("*") for _, t in self.signature if t.startswith("*") and t != "*i64"
                         and t != "*i32"})
        return f"{self.kernel.split(':')[1]}[{'/'.join(dtypes)}]({constexprs})"


def _bind(launch, backend):
    """The (signature, constexprs, attrs, options) a real launch of ``launch`` would compile with.

    Bridges a gap in Triton (3.4 - 3.9): no public ahead-of-time entry binds launch arguments; its launcher's own
    binder (``create_function_from_signature``) and option parsing are used, as ``JITFunction.run`` uses them.
    """
    from triton.runtime.jit import create_function_from_signature, find_paths_if, get_iterable_path

    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, _ = binder(*launch.args, **launch.options)
    names = [p.name for p in kernel.params]
    types = [s[0] for s in specialization]
    constexpr_paths = find_paths_if(types, lambda _, value: value == "constexpr")
    constexprs = {path: get_iterable_path(list(bound.values()), path) for path in constexpr_paths}
    attr_values = [s[1] for s in specialization]
    attr_paths = find_paths_if(attr_values, lambda _, value: isinstance(value, str))
    attrs = {path: backend.parse_attr(get_iterable_path(attr_values, path)) for path in attr_paths}
    options = {k: v for k, v in launch.options.items() if k not in names}
    return dict(zip(names, types)), constexprs, attrs, options


def configurations_of(launches, backend=None) -> dict[Configuration, tuple]:
    """The distinct configurations of recorded launches, each with its bound (signature, constexprs, attrs,
    options)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = backend or make_backend(GPUTarget("cuda", 90, 32))
    found: dict[Configuration, tuple] = {}
    for launch in launches:
        signature, constexprs, attrs, options = _bind(launch, backend)
        names = list(signature)
        key = Configuration(
            kernel=f"{launch.kernel.fn.__module__}:{launch.kernel.fn.__name__}",
            signature=tuple(signature.items()),
            constexprs=tuple(sorted((names[path[0]], value) for path, value in constexprs.items())),
            attrs=tuple(sorted((names[path[0]], repr(value)) for path, value in attrs.items())),
            options=tuple(sorted(options.items())),
        )
        found.setdefault(key, (signature, constexprs, attrs, options))
    return found


def launch_configurations() -> dict[Configuration, tuple]:
    """Every distinct configuration the host code launches, with one recorded launch of each."""
    from ntl_kernels.launch import record_launches

    found: dict[Configuration, tuple] = {}
    for call in (*_ntl_loss_calls(), *_actor_calls(), *_number_token_calls()):
        with record_launches() as launches:
            call()
        for key, bound in configurations_of(launches).items():
            found.setdefault(key, bound)
    return found


@dataclass
class Compiled:
    configuration: str
    target: str
    ok: bool
    registers: int | None = None
    spill_bytes: int | None = None  # spill stores + spill loads reported by ptxas
    shared_bytes: int | None = None
    num_warps: int | None = None
    seconds: float = 0.0
    error: str = ""


PTXAS_USAGE = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers, spill bytes) of a PTX kernel, from ``ptxas -v`` — the ptxas Triton itself assembles with."""
    arch = re.search(r"^\.target (sm_(\d+)\w*)", ptx, re.MULTILINE)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        log = subprocess.run(
            [_ptxas(int(arch.group(2))), "-v", f"--gpu-name={arch.group(1)}", str(source), "-o",
             str(Path(folder) / "kernel.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr
    registers = int(PTXAS_USAGE.search(log).group(1))
    spills = sum(int(x) for x in PTXAS_SPILLS.search(log).groups())
    return registers, spills


def _ptxas(capability: int) -> str:
    """Triton's own choice of ptxas for a target (3.9 takes ptxas-blackwell for sm_90; 3.4 has one ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        return get_ptxas(capability).path
    except TypeError:  # triton 3.4: get_ptxas() takes no target
        return get_ptxas().path


def tool_path(name: str) -> str:
    """A CUDA binary tool shipped inside the installed triton wheel (ptxas, cuobjdump, nvdisasm)."""
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_for(kernel_path: str, bound: tuple, capability: int):
    """``triton.compile`` of one bound configuration for ``sm_<capability>``; returns the compiled kernel."""
    import importlib

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = kernel_path.split(":")
    kernel = getattr(importlib.import_module(module), name)
    signature, constexprs, attrs, options = bound
    target = GPUTarget("cuda", capability, 32)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options)


def _compile_one(job) -> Compiled:
    label, kernel_path, bound, target = job
    start = time.perf_counter()
    try:
        compiled = compile_for(kernel_path, bound, TARGETS[target])
        registers, spills = ptxas_usage(compiled.asm["ptx"])
        return Compiled(label, target, spills == 0, registers, spills, compiled.metadata.shared,
                        compiled.metadata.num_warps, time.perf_counter() - start,
                        "" if spills == 0 else f"{spills} bytes of register spills")
    except Exception as error:  # a compiler failure is the gate's finding, not a crash of the gate
        lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
        summary = lines[:1] + lines[-2:] if len(lines) > 3 else lines  # the position and the compiler's verdict
        return Compiled(label, target, False, seconds=time.perf_counter() - start, error=" | ".join(summary))


def compile_launches(launches, targets=tuple(TARGETS), workers: int = os.cpu_count() or 1) -> list[Compiled]:
    """Compile the distinct configurations of recorded launches for every target; one record each."""
    return _compile_all(configurations_of(launches), targets, workers)


def _compile_all(configurations: dict, targets, workers: int) -> list[Compiled]:
    jobs = [(key.label, key.kernel, bound, target) for key, bound in configurations.items() for target in targets]
    if workers == 1:
        return [_compile_one(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_compile_one, jobs, chunksize=4))


def run_gate(targets=tuple(TARGETS), workers: int = os.cpu_count() or 1, log=print) -> list[Compiled]:
    """Compile every launch configuration of the host code for every target; returns one record each."""
    start = time.perf_counter()
    configurations = launch_configurations()
    log(f"{len(configurations)} launch configurations recorded in {time.perf_counter() - start:.1f} s "
        f"(triton {triton.__version__}); compiling for {', '.join(targets)}")
    results = _compile_all(configurations, targets, workers)
    failed = [r for r in results if not r.ok]
    log(f"{len(results) - len(failed)}/{len(results)} compiled without spills in {time.perf_counter() - start:.0f} s")
    for result in failed:
        log(f"FAILED {result.target} {result.configuration}: {result.error}")
    return results


MATRIX_ENVS = Path(".gpu-compile")  # throwaway environments: only the triton wheel, next to the installed torch


def version_matrix(versions: list[str], targets, workers: int, out: Path) -> bool:
    """Run the gate once per Triton release, each from a folder holding only that triton (``pip --target``) on
    ``PYTHONPATH`` in front of the installed one; write ``out`` (release x target -> compiled / failed)."""
    rows = []
    for version in versions:
        folder = MATRIX_ENVS / f"triton-{version}"
        if not (folder / "triton").is_dir():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder),
                            f"triton=={version}"], check=True)
        record = MATRIX_ENVS / f"gate-{version}.json"
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join([str(folder.resolve()), os.getcwd(), env.get("PYTHONPATH", "")])
        with tempfile.TemporaryDirectory() as cache:  # a cold compile cache: the seconds are the CI gate's
            env["TRITON_CACHE_DIR"] = cache
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "bench.gpu_compile", "--targets", ",".join(targets),
                                  "--workers", str(workers), "--json", str(record)], env=env, capture_output=True,
                                 text=True)
            seconds = time.perf_counter() - start
        results = json.loads(record.read_text())["results"] if record.exists() and run.returncode in (0, 1) else []
        for target in targets:
            of_target = [r for r in results if r["target"] == target]
            failed = [r for r in of_target if not r["ok"]]
            if not of_target:
                last_line = (run.stderr or run.stdout).strip().splitlines()[-1]
                refused = "ImportError: ntl_kernels needs triton" in last_line
                verdict = f"refused at import: {last_line}" if refused else f"gate did not run: {last_line}"
            elif failed:
                verdict = f"**{len(failed)} of {len(of_target)} failed**, e.g. {failed[0]['configuration']}: " \
                          f"{failed[0]['error']}"
            else:
                worst = max(r["registers"] for r in of_target)
                verdict = f"all {len(of_target)} compiled, no spills (max {worst} registers)"
            rows.append(f"| {version} | {target} | {verdict} | {seconds:.0f} |")
        record.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([
        "# GPU-compile gate across Triton releases", "",
        f"`python -m bench.gpu_compile --versions {','.join(versions)}` (`make gpu-compile`) on "
        f"{datetime.date.today().isoformat()}: every launch configuration of the host code (the CI gate's set), "
        f"compiled ahead of time, no GPU; torch {torch.__version__}. Seconds: the whole gate for that release on "
        "a 2-core CPU.", "",
        "| triton | target | result | seconds |", "|---|---|---|---|", *rows, "",
        "Releases below ntl_kernels' minimum are refused when it is imported; why, in `ntl_kernels/launch.py` "
        "(`require_triton`). Registers: the most any configuration uses (spills would fail the gate).", "",
    ]))
    return all("failed" not in row and "did not run" not in row and "refused" not in row for row in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from " + ", ".join(TARGETS))
    parser.add_argument("--json", type=Path, default=None, help="write one record per (configuration, target)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--versions", default=None,
                        help="comma-separated Triton releases: run the gate under each (see version_matrix)")
    parser.add_argument("--matrix-out", type=Path, default=Path("bench/results/gpu_compile.md"))
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run without TRITON_INTERPRET=1: the interpreter replaces the compiler this gate runs")
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"--targets must name {sorted(TARGETS)}, got {unknown}")
    if args.versions:
        ok = version_matrix([v for v in args.versions.split(",") if v], targets, args.workers, args.matrix_out)
        print(args.matrix_out.read_text())
        return 0 if ok else 1
    results = run_gate(targets, args.workers)
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "results": [asdict(r) for r in results]},
                                        indent=1) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
