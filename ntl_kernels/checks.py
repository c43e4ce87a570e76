"""Argument checks shared by the public ops: each error names the argument and the form it expects.

Shapes, dtypes and devices are checked on the host for every input. Values (digit targets, token labels, digit ids,
temperatures) are checked on the host only for CPU tensors, where reading them costs nothing; on the GPU the kernels
check them with device-side asserts (``kernel_options``), so the CUDA path never waits for the device (as
``cross_entropy``).

``kernel_vector`` is the one way a per-row or per-digit tensor reaches a kernel: the kernels index targets, labels,
temperatures and digit ids as flat contiguous vectors, whatever view the caller passed.
"""

from __future__ import annotations

import operator
import os

import torch

from .launch import is_recorded_meta
from .reference import METHODS, NUM_DIGITS, REDUCTIONS

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def use_triton(tensor: torch.Tensor) -> bool:
    """CUDA tensors run the Triton kernels; CPU tensors too when TRITON_INTERPRET=1 (how CI tests the kernels), and
    meta tensors while launches are recorded (``launch.record_launches``)."""
    if tensor.is_cuda or is_recorded_meta(tensor):
        return True
    return tensor.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


INT32_RANGE = (-(2**31), 2**31 - 1)


def kernel_vector(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor``'s values in row-major order as one contiguous vector (of ``dtype`` if given), as every kernel here
    indexes targets, labels, temperatures and digit ids (``ptr + row``). A view — a slice with a step, ``[:, -1]``,
    an ``expand``ed tensor — is copied (a few bytes per row); a contiguous tensor of that dtype is returned as is."""
    flat = tensor.reshape(-1)
    return (flat if dtype is None else flat.to(dtype)).contiguous()


def check_ignore_index(ignore_index) -> int:
    """The kernels compare targets and labels with ``ignore_index`` in int32: it must be an integer that fits (a
    larger one would be truncated there and match another value). Returns it as an int."""
    if isinstance(ignore_index, bool) or not hasattr(ignore_index, "__index__"):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = operator.index(ignore_index)
    if not INT32_RANGE[0] <= ignore_index <= INT32_RANGE[1]:
        raise ValueError(f"ignore_index must fit in int32 [-2**31, 2**31 - 1] (e.g. -100), got {ignore_index}")
    return ignore_index


def check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor [..., V], got {type(logits).__name__}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits must be float32, bfloat16, float16 or float64 [..., V], got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")


def host_checks_values(tensor: torch.Tensor) -> bool:
    """Whether the values of ``tensor`` are checked on the host (CPU) rather than by the kernels (GPU)."""
    return tensor.device.type == "cpu"


def check_digit_ids(digit_ids, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Returns ``digit_ids`` as a contiguous int64 vector (``kernel_vector``) on ``device``; checks 10 distinct ids
    in [0, vocab_size) (on the GPU: their shape here, their values in the kernels)."""
    if not isinstance(digit_ids, torch.Tensor):
        digit_ids = torch.as_tensor(digit_ids)
    if digit_ids.dtype.is_floating_point or digit_ids.dtype == torch.bool:
        raise TypeError(f"digit_ids must be 10 integer token ids, got dtype {digit_ids.dtype}")
    if digit_ids.device != device:
        raise ValueError(f"digit_ids is on {digit_ids.device} but logits are on {device}; put both on one device")
    if digit_ids.shape != (NUM_DIGITS,):
        raise ValueError(f"digit_ids must be 10 distinct token ids (entry i = digit i), got shape {tuple(digit_ids.shape)}")
    if not host_checks_values(digit_ids):
        return kernel_vector(digit_ids, torch.long)
    ids = digit_ids.tolist()
    if len(set(ids)) != NUM_DIGITS:
        raise ValueError(f"digit_ids must be 10 distinct token ids (entry i = digit i), got {ids}")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"digit_ids must lie in [0, {vocab_size}) (the logits' last dimension), got {ids}")
    return kernel_vector(digit_ids, torch.long)


def check_targets(targets, leading_shape: torch.Size, device: torch.device, ignore_index: int) -> None:
    """Digit targets: integers 0..9 or ``ignore_index``, shaped like the logits without their last dimension."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of digit values, got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of digit values 0..9 or ignore_index, got {targets.dtype}")
    if targets.shape != leading_shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal the logits' shape without the vocabulary dimension "
            f"{tuple(leading_shape)}"
        )
    if targets.device != device:
        raise ValueError(f"targets is on {targets.device} but logits are on {device}; put both on one device")
    if not host_checks_values(targets):
        return
    # A silently ignored bad target would make a wrong loss look right.
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= NUM_DIGITS))
    if bool(bad.any()):
        example = targets[bad][0].item()
        raise ValueError(
            f"targets must be digit values 0..9 or ignore_index={ignore_index}, found {example}; "
            "use ntl_kernels.digit_targets to turn token ids into digit values"
        )


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def check_reduction(reduction: str, targets: torch.Tensor) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "sample" and targets.dim() == 0:
        raise ValueError("reduction='sample' groups by the first dimension; targets must have at least one dimension")
