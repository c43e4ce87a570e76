"""The one place this package launches Triton kernels, so that every launch can be recorded instead of run.

``record_launches()`` turns the host code into a description of its launches: inside it, ``launch`` stores the
kernel, grid, arguments and options it was given instead of running the kernel. Called on ``meta`` tensors (shapes
and dtypes, no data) the public ops then run their whole host code — layout decisions, block shapes, grids — for any
size, on any machine. The GPU-compile gate (``bench/gpu_compile.py``) compiles exactly those launches for sm_80 and
sm_90, so a launch path added to the host code cannot escape it. Meta tensors also prove the CUDA path free of
host syncs: a value read (``.item()``, ``.tolist()``, ``bool(t)``) fails on them.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch
import triton

MIN_TRITON = (3, 4)


def require_triton(version: str) -> None:
    """Refuse Triton releases that cannot compile these kernels cleanly. The GPU-compile gate across releases
    (``make gpu-compile``, bench/results/gpu_compile.md) passes on 3.4 to 3.9; on 3.3.1, run before this refusal
    existed, 5 of the 159 configurations then recorded (the fused forward at 8,192 columns) spilled registers on
    sm_80."""
    release = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if release < MIN_TRITON:
        raise ImportError(
            f"ntl_kernels needs triton >= {'.'.join(map(str, MIN_TRITON))}, found triton {version}: older releases "
            "do not compile its kernels cleanly for A100/H100 (bench/results/gpu_compile.md). Install the triton "
            "your torch >= 2.8 pins (pip install 'torch>=2.8')."
        )


require_triton(triton.__version__)
_recorded: list | None = None


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the host code asked for it: ``kernel[grid](*args, **options)``."""

    kernel: object  # the @triton.jit function
    grid: tuple
    args: tuple
    options: dict = field(default_factory=dict)  # constexprs by name, num_warps, num_stages, debug


def launch(kernel, grid: tuple, *args, **options) -> None:
    """Run ``kernel[grid](*args, **options)``, or record it inside ``record_launches()``."""
    if _recorded is not None:
        _recorded.append(Launch(kernel, tuple(grid), args, options))
        return
    kernel[grid](*args, **options)


@contextlib.contextmanager
def record_launches():
    """Record (and do not run) every launch made inside the block; yields the list they are appended to.

    Meta tensors take the kernel path inside the block (``use_triton``), so public ops can be called on
    ``torch.empty(shape, device="meta")`` inputs.
    """
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous


def recording() -> bool:
    return _recorded is not None


def is_recorded_meta(tensor: torch.Tensor) -> bool:
    """A meta tensor inside ``record_launches()``: treated like a CUDA tensor whose values cannot be read."""
    return tensor.device.type == "meta" and _recorded is not None
