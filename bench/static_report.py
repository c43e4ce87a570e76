"""What the compiled kernels promise on an H100, read from their SASS without a GPU: the static performance report.

    python -m bench.static_report            # -> bench/results/gpu_static_report.{md,json}

For each kernel at the benchmark shapes (16,384 x 151,936 and 32,768 x 151,936, bf16; the 10 digits), and the single
pass (forward and backward) with Llama-3's 1,110 number tokens with values and weights (16,384 rows of Qwen's
151,936 columns, for a like-for-like comparison, and of Llama-3's 128,256), compiled for sm_90 exactly as
the host code launches it (``bench.gpu_compile`` records the launch on meta tensors): registers, spills, shared
memory, theoretical occupancy on an H100, SASS instructions per element, the widths of its global loads and stores,
the bytes it moves and the time that traffic takes at 3.0 TB/s (an H100's device-to-device copy rate).

Instructions per element: for a kernel that loops over the vocabulary, the hot loop's instructions (without the
blocks inside it that run only sometimes, e.g. the rescale when a block raises the row max; with them in brackets)
over the elements one thread handles per iteration. For a kernel without a loop, the marginal count: the kernel is
also compiled with twice the elements per thread, and the difference in instructions is divided by the difference
in elements (per-program set-up and the rare digit/label blocks do not scale, so they drop out).

Instructions per element *as launched* (beside it): what a thread runs per element it handles, set-up included,
at the launch's shape. The instructions a thread runs are the kernel's main body (without the out-of-line code of
diverged warps after its ``EXIT``) minus those a forward conditional branch jumps over (the digit-column and label
blocks, the rescale: ``common_path``);
for a looping kernel the loop runs once per vocabulary block of a row (``ceil(V / BLOCK_VOCAB)`` iterations, the
rescale in ``H_n`` of them) and the rest once per program of the row (the grid's second dimension: the backward's
programs each loop over a few blocks), over the row's real elements per thread (``V / threads``, the last block
partial);
for a loop-free kernel they run once per program, over its elements per thread.
GPU benchmarks confirm these numbers when a GPU is lent (``bench/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton

from bench.gpu_compile import _bind, compile_for, ptxas_usage, tool_path

SHAPES = ((16_384, 151_936), (32_768, 151_936))
NUMBER_TOKEN_SHAPES = ((16_384, 151_936), (16_384, 128_256))  # Llama-3's K at Qwen's and Llama-3's vocabulary
LLAMA3_NUMBER_TOKENS = 1_110
QWEN_DIGIT_COLUMNS = range(15, 25)
BANDWIDTH = 3.0e12  # bytes/s, an H100 SXM device-to-device copy
SECTOR = 32  # bytes of one DRAM/L2 transaction
H100 = dict(registers=65_536, warps=64, ctas=32, shared=233_472, shared_per_cta_reserved=1_024)


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


def _record(kernel_name: str, rows: int, vocab_size: int, number_tokens: int = 10):
    """The launches the host code makes for the benchmark call that runs ``kernel_name``; a set of other than the 10
    digits comes with its values and per-row weights (the fused op's heaviest variant)."""
    from ntl_kernels import fused_logprob_entropy_ntl, ntl_loss
    from ntl_kernels.launch import record_launches

    ids, targets = _meta(number_tokens, dtype=torch.long), _meta(rows, dtype=torch.long)
    options = {} if number_tokens == 10 else dict(number_values=_meta(number_tokens), weights=_meta(rows))
    logits = _meta(rows, vocab_size, dtype=torch.bfloat16).requires_grad_()
    with record_launches() as launches:
        if kernel_name.startswith("_ntl"):
            ntl_loss(logits, targets, ids, method="was", reduction="mean").backward(_meta())
        else:  # the NTL engine's use: log-prob, entropy and NTL differentiated, per-row temperature
            out = fused_logprob_entropy_ntl(logits, _meta(rows, dtype=torch.long), ids, temperature=_meta(rows),
                                            ntl_targets=targets, method="was", **options)
            torch.autograd.backward([out.log_probs, out.entropy, out.ntl], [_meta(rows)] * 3)
    return next(launch for launch in launches if launch.kernel.fn.__name__ == kernel_name)


@contextmanager
def _doubled_elements(kernel_name: str):
    """Host settings under which ``kernel_name`` handles twice the elements per thread (same warps)."""
    import importlib

    logprob_entropy_ntl = importlib.import_module("ntl_kernels.logprob_entropy_ntl")
    ntl_loss = importlib.import_module("ntl_kernels.ntl_loss")
    if kernel_name == "_ntl_backward_kernel":
        original = ntl_loss._backward_blocks
        ntl_loss._backward_blocks = lambda v, k: (lambda rows, cols: (rows * 2, cols))(*original(v, k))
        try:
            yield
        finally:
            ntl_loss._backward_blocks = original
    else:
        name = "BACKWARD_BLOCK_VOCAB" if kernel_name == "_backward_kernel" else "FORWARD_BLOCK_VOCAB"
        original = getattr(logprob_entropy_ntl, name)
        setattr(logprob_entropy_ntl, name, original * 2)
        try:
            yield
        finally:
            setattr(logprob_entropy_ntl, name, original)


@dataclass
class Instruction:
    address: int
    predicate: str
    opcode: str
    operands: str


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)\s*([^;]*);")


def sass(cubin: bytes) -> list[Instruction]:
    """The kernel's SASS, from the triton wheel's ``cuobjdump``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run([tool_path("cuobjdump"), "-sass", file.name], capture_output=True, text=True,
                              check=True).stdout
    instructions = []
    for match in SASS_LINE.finditer(text):
        address, predicate, opcode, operands = match.groups()
        instructions.append(Instruction(int(address, 16), (predicate or "").strip(), opcode, operands.strip()))
    return instructions


def _branch_target(instruction: Instruction) -> int | None:
    if instruction.opcode.startswith("BRA") and not instruction.opcode.startswith("BRA.DIV"):
        target = re.match(r"(0x[0-9a-f]+)", instruction.operands)
        return int(target.group(1), 16) if target else None
    return None


def hot_loop(instructions: list[Instruction]) -> tuple[list[Instruction], list[Instruction]] | None:
    """(loop body, the instructions inside it that a forward branch can skip) of the loop that loads global memory,
    or None for a kernel without such a loop."""
    for branch in instructions:
        target = _branch_target(branch)
        if target is None or target >= branch.address or not branch.predicate:
            continue  # a loop's back edge is conditional; unconditional backward jumps return from out-of-line code
        body = [i for i in instructions if target <= i.address <= branch.address]
        if not any(i.opcode.startswith("LDG") for i in body):
            continue
        skipped = set()
        for inner in body:
            inner_target = _branch_target(inner)
            if inner.predicate and inner_target is not None and inner.address < inner_target <= branch.address:
                skipped.update(i.address for i in body if inner.address < i.address < inner_target)
        return body, [i for i in body if i.address in skipped]
    return None


def common_path(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions a program runs when its warps do not diverge and it takes no rare branch: the main body
    (up to the first unconditional ``EXIT``; after it come the out-of-line paths of diverged warps, reached by
    ``BRA.DIV``, and padding) without what a forward conditional branch jumps over (blocks only some programs run:
    the digit-column and label blocks, the rescale)."""
    end = next((i.address for i in instructions if i.opcode == "EXIT" and not i.predicate), instructions[-1].address)
    main = [i for i in instructions if i.address <= end]
    skipped = set()
    for branch in main:
        target = _branch_target(branch)
        if branch.predicate and target is not None and target > branch.address:
            skipped.update(i.address for i in main if branch.address < i.address < target)
    return [i for i in main if i.address not in skipped]


def memory_widths(instructions: list[Instruction]) -> dict[str, int]:
    """Counts of global loads/stores by width, e.g. {"LDG.128": 2, "STG.16": 1}."""
    widths: dict[str, int] = {}
    for instruction in instructions:
        kind = instruction.opcode.split(".")[0]
        if kind not in ("LDG", "STG"):
            continue
        bits = next((p for p in instruction.opcode.split(".")[1:] if p in ("128", "64")), None)
        bits = bits or ("16" if ".U16" in instruction.opcode or ".S16" in instruction.opcode else "32")
        key = f"{kind}.{bits}"
        widths[key] = widths.get(key, 0) + 1
    return widths


def occupancy(registers: int, warps: int, shared: int) -> tuple[int, float]:
    """(CTAs per SM, fraction of the SM's 64 warps) on an H100, from registers, warps and shared memory."""
    warp_registers = -(-registers * 32 // 256) * 256  # allocated per warp in units of 256
    by_registers = H100["registers"] // (warp_registers * warps)
    by_warps = H100["warps"] // warps
    by_shared = H100["shared"] // (shared + H100["shared_per_cta_reserved"])
    ctas = min(H100["ctas"], by_registers, by_warps, by_shared)
    return ctas, ctas * warps / H100["warps"]


def bytes_moved(kernel_name: str, rows: int, vocab_size: int, number_tokens: int = 10, element: int = 2) -> int:
    """DRAM bytes of one launch at the benchmark shape (32-byte sectors for the gathers of the 10 digit columns; the
    single pass reads its number-token columns inside the row it reads anyway, and with a set of other than the 10
    digits a float32 weight per row; the set's ids and values are read once, from L2 after that)."""
    weight = 0 if number_tokens == 10 else 4
    token_log_probs = 4 * number_tokens
    row_bytes = vocab_size * element
    digit_sectors = len({(c * element) // SECTOR for c in QWEN_DIGIT_COLUMNS}) * SECTOR
    if kernel_name == "_ntl_forward_kernel":  # digit sectors + int64 target per row
        return rows * (digit_sectors + 8)
    if kernel_name == "_ntl_backward_kernel":  # the dense gradient, + digit sectors and target to recompute
        return rows * (row_bytes + digit_sectors + 8)
    if kernel_name == "_forward_kernel":  # the logits; per row label, temperature in, 4 floats + K log-probs out
        return rows * (row_bytes + 8 + 4 + 4 * 4 + token_log_probs + 8 + 4 + weight)
    # _backward_kernel: logits in, gradient out; per row the saved statistics, upstream gradients, K log-probs
    return rows * (2 * row_bytes + 8 + 4 * 8 + token_log_probs + weight)


@dataclass
class KernelReport:
    kernel: str
    rows: int
    vocab_size: int
    number_tokens: int
    constexprs: str
    num_warps: int
    grid: str
    registers: int
    spill_bytes: int
    shared_bytes: int
    ctas_per_sm: int
    occupancy: float
    elements_per_thread: int
    sass_per_element: float
    sass_per_element_as_launched: float
    sass_per_element_note: str
    global_memory: dict
    bytes_moved: int
    bandwidth_bound_ms: float


def _compile(launch):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    bound = _bind(launch, make_backend(GPUTarget("cuda", 90, 32)))
    return compile_for(f"{launch.kernel.fn.__module__}:{launch.kernel.fn.__name__}", bound, 90)


def _elements_per_thread(launch, warps: int) -> int:
    options = launch.options
    per_program = options.get("BLOCK_VOCAB", 1) * options.get("BLOCK_ROWS", 1)
    return per_program // (warps * 32)


def report_kernel(kernel_name: str, rows: int, vocab_size: int, number_tokens: int = 10) -> KernelReport:
    launch = _record(kernel_name, rows, vocab_size, number_tokens)
    compiled = _compile(launch)
    registers, spills = ptxas_usage(compiled.asm["ptx"])
    warps = compiled.metadata.num_warps
    ctas, fraction = occupancy(registers, warps, compiled.metadata.shared)
    instructions = sass(compiled.asm["cubin"])
    elements = _elements_per_thread(launch, warps)
    loop = hot_loop(instructions)
    always = len(common_path(instructions))  # the instructions every program runs
    if kernel_name == "_ntl_forward_kernel":  # 10 digit logits per row: no per-element loop over the vocabulary
        per_element, note = float("nan"), "gathers 10 columns per row; no vocabulary loop"
        as_launched = float("nan")
        hot = instructions
    elif loop is not None:
        body, sometimes = loop
        per_element = (len(body) - len(sometimes)) / elements
        # The blocks that run only sometimes (the rescale) run when a vocabulary block raises the row max: for a
        # row whose values are in random order, in H_n = 1 + 1/2 + ... + 1/n of its n blocks on average.
        blocks = -(-vocab_size // launch.options["BLOCK_VOCAB"])
        raising = sum(1 / k for k in range(1, blocks + 1))
        expected = per_element + len(sometimes) * raising / blocks / elements
        # as launched: the loop once per block of the row, the rescale in `raising` of them, and the instructions
        # outside the loop that every program runs once per program of the row, over the row's real elements per
        # thread. (A loop with a runtime trip count is jumped over when it would run 0 times: its body is not on the
        # common path then, so `outside` is counted by address.)
        in_body = {i.address for i in body}
        outside = sum(1 for i in common_path(instructions) if i.address not in in_body)
        programs = launch.grid[1] if len(launch.grid) > 1 else 1
        per_row = blocks * (len(body) - len(sometimes)) + raising * len(sometimes) + programs * outside
        as_launched = per_row / (vocab_size / (warps * 32))
        rescale = f"the {len(sometimes)} instr that run only when a block raises the row max bring it to " \
                  f"{len(body) / elements:.1f} in those iterations, {expected:.1f} on average over the row " \
                  f"({raising:.1f} of {blocks} blocks); " if sometimes else ""
        note = f"hot loop {len(body) - len(sometimes)} instr / {elements} elem per iteration; {rescale}" \
               f"as launched {as_launched:.2f}: {blocks} iterations + {programs} x {outside} instr outside the " \
               f"loop over " \
               f"{vocab_size / (warps * 32):.1f} real elem per thread " \
               f"({vocab_size / launch.options['BLOCK_VOCAB']:.2f} blocks)"
        hot = body
    else:
        with _doubled_elements(kernel_name):
            wide_launch = _record(kernel_name, rows, vocab_size)
            wide = sass(_compile(wide_launch).asm["cubin"])
        extra_elements = _elements_per_thread(wide_launch, warps) - elements
        per_element = (len(wide) - len(instructions)) / extra_elements
        as_launched = always / elements
        setup = always - per_element * elements
        note = f"marginal: {len(wide) - len(instructions)} instr per {extra_elements} extra elem; " \
               f"{len(instructions)} instr in the whole kernel, {always} of them run by every program; as launched " \
               f"{as_launched:.2f}: {per_element:g} x {elements} elem + {setup:.0f} set-up instr per program"
        hot = instructions
    moved = bytes_moved(kernel_name, rows, vocab_size, number_tokens)
    constexprs = ", ".join(f"{k}={v}" for k, v in launch.options.items() if k.isupper() and k != "NUM_TOKENS")
    return KernelReport(
        kernel_name, rows, vocab_size, number_tokens, constexprs, warps, "x".join(map(str, launch.grid)), registers,
        spills,
        compiled.metadata.shared, ctas, round(fraction, 3), elements, round(per_element, 2),
        round(as_launched, 2), note,
        memory_widths(hot), moved, round(moved / BANDWIDTH * 1e3, 4),
    )


KERNELS = ("_forward_kernel", "_backward_kernel", "_ntl_forward_kernel", "_ntl_backward_kernel")
TARGETS = {  # issue 9's acceptance targets, checked in the report
    "_ntl_backward_kernel": "<= 64 registers, >= 50% occupancy, 128-bit zero-fill stores",
    "_forward_kernel": "<= 14 SASS instructions per element in the hot loop, 128-bit loads",
}


def _figure(value: float) -> str:
    return "-" if value != value else f"{value:g}"


def write_report(reports: list[KernelReport], out_dir: Path, before: dict | None) -> Path:
    env = {"triton": triton.__version__, "torch": torch.__version__, "target": "sm_90 (H100)",
           "date": datetime.date.today().isoformat()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_static_report.json").write_text(
        json.dumps({"environment": env, "results": [asdict(r) for r in reports], "before": before}, indent=1) + "\n")
    lines = [
        "# Static performance report (compiled for sm_90, no GPU)", "",
        f"Written by `python -m bench.static_report` ({', '.join(f'{k} {v}' for k, v in env.items())}). "
        "Each kernel compiled as the host code launches it at the benchmark shape (bf16, V = 151,936); "
        "occupancy is theoretical (H100: 65,536 registers, 64 warps, 228 KB shared memory per SM); "
        "time = bytes / 3.0 TB/s. Method: `bench/static_report.py`'s docstring.", "",
        "| kernel | K | rows x V | config | warps | regs | spills | smem B | CTAs/SM | occupancy | elem/thread | "
        "SASS/elem (hot loop or marginal) | SASS/elem as launched | global loads/stores (hot loop, else whole "
        "kernel) | MB moved | ms at 3.0 TB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        memory = ", ".join(f"{k} x{v}" for k, v in sorted(r.global_memory.items()))
        lines.append(
            f"| `{r.kernel}` | {r.number_tokens:,} | {r.rows:,} x {r.vocab_size:,} | {r.constexprs} | {r.num_warps} | "
            f"{r.registers} | {r.spill_bytes} | "
            f"{r.shared_bytes} | {r.ctas_per_sm} | {r.occupancy:.0%} | {r.elements_per_thread} | "
            f"{_figure(r.sass_per_element)} | {_figure(r.sass_per_element_as_launched)} | {memory} | "
            f"{r.bytes_moved / 1e6:,.1f} | {r.bandwidth_bound_ms:.3f} |")
    lines += ["", "SASS per element, how it was counted:", ""]
    seen = set()
    for r in reports:
        if (r.kernel, r.number_tokens, r.vocab_size) not in seen:
            seen.add((r.kernel, r.number_tokens, r.vocab_size))
            lines.append(f"- `{r.kernel}` (K = {r.number_tokens:,}, V = {r.vocab_size:,}): {r.sass_per_element_note}")
    lines += ["", *number_token_comparison(reports)]
    lines += ["", "Targets (issue 9): " + "; ".join(f"`{k}` {v}" for k, v in TARGETS.items()) + "."]
    if before:
        lines += ["", f"## Before ({before['source']})", "", *before["lines"]]
    (out_dir / "gpu_static_report.md").write_text("\n".join(lines) + "\n")
    return out_dir / "gpu_static_report.md"


def number_token_comparison(reports: list[KernelReport]) -> list[str]:
    """The single pass with Llama-3's 1,110 number tokens against the 10 digits at the same shape (issue 17's
    target: SASS per element within 15%)."""
    digits = {(r.kernel, r.rows, r.vocab_size): r for r in reports if r.number_tokens == 10}
    lines = ["Llama-3's K = 1,110 (values and weights) against the 10 digits, same rows and vocabulary:", ""]
    for r in reports:
        base = digits.get((r.kernel, r.rows, r.vocab_size))
        if r.number_tokens == 10 or base is None:
            continue
        change = r.sass_per_element_as_launched / base.sass_per_element_as_launched - 1
        lines.append(
            f"- `{r.kernel}` ({r.rows:,} x {r.vocab_size:,}): SASS/elem as launched "
            f"{base.sass_per_element_as_launched:g} -> {r.sass_per_element_as_launched:g} ({change:+.1%}; hot loop "
            f"{_figure(base.sass_per_element)} -> "
            f"{_figure(r.sass_per_element)}), registers {base.registers} -> {r.registers}, bytes "
            f"{base.bytes_moved / 1e6:,.1f} -> {r.bytes_moved / 1e6:,.1f} MB "
            f"({r.bytes_moved / base.bytes_moved - 1:+.1%}); target: within 15% "
            f"({'met' if change <= 0.15 else 'missed'}).")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    reports = [report_kernel(k, rows, vocab) for k in KERNELS for rows, vocab in SHAPES]
    reports += [report_kernel(k, rows, vocab, LLAMA3_NUMBER_TOKENS)
                for k in ("_forward_kernel", "_backward_kernel") for rows, vocab in NUMBER_TOKEN_SHAPES]
    before_file = args.out / "gpu_static_report_before.json"
    before = json.loads(before_file.read_text()) if before_file.exists() else None
    print(write_report(reports, args.out, before).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
