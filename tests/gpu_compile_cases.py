"""Kernels that show what the GPU-compile gate (``bench/gpu_compile.py``) catches, run by test_gpu_compile.py.

    python -m tests.gpu_compile_cases      # (without TRITON_INTERPRET) one JSON line per case

- ``sums_reduced_in_loop``: the pattern of ntl_loss's forward reduction before the fix, ``acc += tl.sum(tile, 1)``
  in a loop whose result is used twice, with two partials per thread: Triton <= 3.8 asserts in
  TritonGPUOptimizeThreadLocality. The interpreter runs it happily.
- ``sums_reduced_after_loop``: the fix (accumulate the tile, reduce once after the loop): compiles.
- ``spilling``: a 16,384-float row held by one warp across a reduction: more live values than registers.
"""

from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl

from ntl_kernels.launch import launch, record_launches


@triton.jit
def sums_reduced_in_loop(partials_ptr, out_ptr, n_blocks, BLOCK_GROUPS: tl.constexpr, BLOCK_PARTIALS: tl.constexpr):
    groups = tl.arange(0, BLOCK_GROUPS)
    total = tl.zeros([BLOCK_GROUPS], dtype=tl.float32)
    for start in range(0, n_blocks, BLOCK_PARTIALS):
        blocks = start + tl.arange(0, BLOCK_PARTIALS)
        at = partials_ptr + groups[:, None] * n_blocks + blocks[None, :]
        total += tl.sum(tl.load(at, mask=(blocks < n_blocks)[None, :], other=0.0), axis=1)
    tl.store(out_ptr + groups, total)
    tl.store(out_ptr + BLOCK_GROUPS + groups, total * 2.0)


@triton.jit
def sums_reduced_after_loop(partials_ptr, out_ptr, n_blocks, BLOCK_GROUPS: tl.constexpr,
                            BLOCK_PARTIALS: tl.constexpr):
    groups = tl.arange(0, BLOCK_GROUPS)
    tile = tl.zeros([BLOCK_GROUPS, BLOCK_PARTIALS], dtype=tl.float32)
    for start in range(0, n_blocks, BLOCK_PARTIALS):
        blocks = start + tl.arange(0, BLOCK_PARTIALS)
        at = partials_ptr + groups[:, None] * n_blocks + blocks[None, :]
        tile += tl.load(at, mask=(blocks < n_blocks)[None, :], other=0.0)
    total = tl.sum(tile, axis=1)
    tl.store(out_ptr + groups, total)
    tl.store(out_ptr + BLOCK_GROUPS + groups, total * 2.0)


@triton.jit
def spilling(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets)
    tl.store(y_ptr + offsets, x / tl.sum(x * x, axis=0))


def recorded_cases():
    """One recorded launch per case, as the host code of a kernel would make it."""
    meta = torch.empty(1 << 16, device="meta")
    with record_launches() as launches:
        for kernel in (sums_reduced_in_loop, sums_reduced_after_loop):
            launch(kernel, (1,), meta, meta, 300, BLOCK_GROUPS=1, BLOCK_PARTIALS=256)
        launch(spilling, (1,), meta, meta, BLOCK=16_384, num_warps=1)
    return launches


def main() -> None:
    from bench.gpu_compile import compile_launches

    assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET: the gate runs the compiler"
    for result in compile_launches(recorded_cases(), targets=("sm_90",), workers=1):
        print(json.dumps({"configuration": result.configuration, "ok": result.ok, "error": result.error}))


if __name__ == "__main__":
    main()
