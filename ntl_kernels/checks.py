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
from .reference import MAX_NUMBER_TOKENS, METHODS, NUM_DIGITS, REDUCTIONS

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


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
    """Returns ``digit_ids`` as a contiguous int64 vector (``kernel_vector``) on ``device``; checks K distinct ids
    in [0, vocab_size), K in 1..2048 (on the GPU: their shape here, their values in the kernels)."""
    if not isinstance(digit_ids, torch.Tensor):
        digit_ids = torch.as_tensor(digit_ids)
    if digit_ids.dtype.is_floating_point or digit_ids.dtype == torch.bool:
        raise TypeError(f"digit_ids must be K integer token ids (the number-token set), got dtype {digit_ids.dtype}")
    if digit_ids.device != device:
        raise ValueError(f"digit_ids is on {digit_ids.device} but logits are on {device}; put both on one device")
    if digit_ids.dim() != 1 or not 1 <= len(digit_ids) <= MAX_NUMBER_TOKENS:
        raise ValueError(
            f"digit_ids must be a vector of K distinct token ids, 1 <= K <= {MAX_NUMBER_TOKENS} (entry k = the token "
            f"of slot k; the 10 digits: entry i = digit i), got shape {tuple(digit_ids.shape)}"
        )
    if not host_checks_values(digit_ids):
        if len(digit_ids) > 16 and not is_recorded_meta(digit_ids):
            # The kernels check the distinctness of at most 16 ids (a pairwise [16, 16] test); a larger set by a
            # sort here, asynchronously (no host sync).
            ordered = digit_ids.sort().values
            torch._assert_async((ordered[1:] != ordered[:-1]).all(), "digit_ids must be distinct token ids")
        return kernel_vector(digit_ids, torch.long)
    ids = digit_ids.tolist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"digit_ids must be {len(ids)} distinct token ids (entry k = the token of slot k), got {ids}")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"digit_ids must lie in [0, {vocab_size}) (the logits' last dimension), got {ids}")
    return kernel_vector(digit_ids, torch.long)


def _slots(num_tokens: int) -> str:
    return "digit values 0..9" if num_tokens == NUM_DIGITS else f"number-token slots 0..{num_tokens - 1}"


def check_targets(
    targets, leading_shape: torch.Size, device: torch.device, ignore_index: int, num_tokens: int = NUM_DIGITS
) -> None:
    """Targets: integer slots 0..K-1 of the number-token set (K = ``num_tokens``; the digits 0..9 for K = 10) or
    ``ignore_index``, shaped like the logits without their last dimension."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of {_slots(num_tokens)}, got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(
            f"targets must be an integer tensor of {_slots(num_tokens)} or ignore_index, got {targets.dtype}"
        )
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
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_tokens))
    if bool(bad.any()):
        example = targets[bad][0].item()
        raise ValueError(
            f"targets must be {_slots(num_tokens)} or ignore_index={ignore_index}, found {example}; "
            "use ntl_kernels.digit_targets (number_targets) to turn token ids into slots"
        )


def check_number_values(number_values, num_tokens: int, device: torch.device) -> torch.Tensor | None:
    """None, or the K finite values of the number-token set on ``device``, detached (values checked on the host for
    CPU tensors, by an asynchronous device-side assert elsewhere)."""
    if number_values is None:
        return None
    if not isinstance(number_values, torch.Tensor):
        number_values = torch.as_tensor(number_values)
    if not (number_values.dtype.is_floating_point or number_values.dtype in INTEGER_DTYPES):
        raise TypeError(
            f"number_values must be a real tensor [K] of the tokens' values, got dtype {number_values.dtype}"
        )
    if number_values.shape != (num_tokens,):
        raise ValueError(
            f"number_values must have shape [K] = ({num_tokens},) (one value per entry of digit_ids), got "
            f"{tuple(number_values.shape)}"
        )
    if number_values.device != device:
        raise ValueError(f"number_values is on {number_values.device} but logits are on {device}")
    number_values = number_values.detach()
    _check_finite(number_values, "number_values must be finite")
    return number_values


def check_weights(weights, targets_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """None, or per-position weights shaped like the targets: floating, finite, >= 0 (values checked on the host for
    CPU tensors, by an asynchronous device-side assert elsewhere). Returned detached: weights are not
    differentiated."""
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor) or not weights.dtype.is_floating_point:
        raise TypeError(
            f"weights must be a floating tensor shaped like the targets, got {getattr(weights, 'dtype', type(weights))}"
        )
    if weights.shape != targets_shape:
        raise ValueError(
            f"weights shape {tuple(weights.shape)} must equal the targets' shape {tuple(targets_shape)} (one weight "
            "per position)"
        )
    if weights.device != device:
        raise ValueError(f"weights is on {weights.device} but logits are on {device}; put both on one device")
    weights = weights.detach()
    _check_finite(weights, "weights must be finite and >= 0", non_negative=True)
    return weights


def check_squash_factor(squash_factor) -> float | None:
    """None, or a finite number > 1 (ntloss's rule: the farthest wrong token costs ``squash_factor`` times the
    closest)."""
    if squash_factor is None:
        return None
    if isinstance(squash_factor, bool) or not isinstance(squash_factor, (int, float)):
        raise TypeError(f"squash_factor must be None or a number > 1, got {type(squash_factor).__name__}")
    if not 1 < squash_factor < float("inf"):  # also False for NaN
        raise ValueError(f"squash_factor must be a finite number > 1 (1 would be cross entropy), got {squash_factor}")
    return float(squash_factor)


def _check_finite(tensor: torch.Tensor, message: str, non_negative: bool = False) -> None:
    usable = torch.isfinite(tensor) & (tensor >= 0) if non_negative else torch.isfinite(tensor)
    if not host_checks_values(tensor):
        if not is_recorded_meta(tensor):
            torch._assert_async(usable.all(), message)
        return
    if not bool(usable.all()):
        raise ValueError(f"{message}, found {tensor[~usable].reshape(-1)[0].item()}")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def check_reduction(reduction: str, targets: torch.Tensor) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "sample" and targets.dim() == 0:
        raise ValueError("reduction='sample' groups by the first dimension; targets must have at least one dimension")
