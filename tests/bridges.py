"""Test-only bridges for verl releases before 0.9 on a machine without a GPU (the CPU tests and the verl matrix).

verl 0.7.x / 0.8.0: ``verl.utils.attention_utils`` takes ``index_first_axis``, ``pad_input``, ``unpad_input`` and
``rearrange`` from ``flash_attn.bert_padding`` (CUDA-only wheels); verl 0.9.0 added pure-torch fallbacks. This
bridge gives those releases the same plain-torch functions, and nothing on 0.9.
"""

from __future__ import annotations

import torch


def index_first_axis(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return tensor[indices]


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """``[nnz, ...]`` rows back to ``[batch, seqlen, ...]``, zeros where ``indices`` has no row."""
    padded = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    padded[indices] = hidden_states
    return padded.view(batch, seqlen, *hidden_states.shape[1:])


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask=None):
    """``[batch, seqlen, ...]`` -> (the rows where the mask is set, their flat indices, cu_seqlens int32, longest
    sequence, used lengths), as ``flash_attn.bert_padding.unpad_input`` returns them."""
    mask = attention_mask if unused_mask is None else attention_mask + unused_mask
    lengths = mask.sum(-1, dtype=torch.int32)
    indices = mask.flatten().nonzero().flatten()
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    rows = hidden_states.reshape(-1, *hidden_states.shape[2:])[indices]
    return rows, indices, cu_seqlens, int(lengths.max()), attention_mask.sum(-1, dtype=torch.int32)


# the einops patterns verl < 0.9 passes to ``attention_utils.rearrange`` (legacy dp_actor / dp_critic position ids),
# in plain torch: einops is not a dependency of those releases
REARRANGEMENTS = {
    "b s ... -> (b s) ...": lambda t: t.reshape(t.shape[0] * t.shape[1], *t.shape[2:]),
    "c b s ... -> (b s) c ...": lambda t: t.movedim(0, 2).reshape(t.shape[1] * t.shape[2], t.shape[0], *t.shape[3:]),
}


def rearrange(tensor: torch.Tensor, pattern: str) -> torch.Tensor:
    """``einops.rearrange(tensor, pattern)`` for the patterns in ``REARRANGEMENTS``; ValueError for any other."""
    if pattern not in REARRANGEMENTS:
        raise ValueError(f"tests/bridges.rearrange knows the patterns {sorted(REARRANGEMENTS)}, not {pattern!r}")
    return REARRANGEMENTS[pattern](tensor)


def bridge_flash_attn_padding() -> None:
    """On verl < 0.9 without flash-attn: make ``verl.utils.attention_utils`` use the functions above."""
    import importlib.util

    if importlib.util.find_spec("verl") is None or importlib.util.find_spec("flash_attn") is not None:
        return
    from verl.utils import attention_utils

    if hasattr(attention_utils, "_fallback_unpad_input"):
        return
    functions = (index_first_axis, pad_input, rearrange, unpad_input)
    attention_utils._get_attention_functions = lambda: functions
