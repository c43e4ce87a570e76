"""Test helpers for the verl integration on CPU: a tiny Qwen2 model on disk, engines, a planted digit distribution.

The CPU platform itself is ``verl_integration.inprocess.use_cpu_platform`` (explicit, never on import); these helpers
call it, so only the tests (and the CPU demo) switch verl to CPU.
"""

from __future__ import annotations

import functools
import tempfile

import torch

from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from verl_integration.inprocess import build_engine, engine_settings, make_batch, use_cpu_platform

DIGIT_IDS = QWEN2_5_DIGIT_IDS  # '0'..'9' -> 15..24
MARKER = 500  # a non-digit token id the planted model reacts to


def write_tiny_model(path: str) -> str:
    """Save a random tiny Qwen2 (hidden 32, 2 layers, Qwen2.5's 151,936 vocabulary, seed 0) and the Qwen2.5 tokenizer
    to ``path``; returns ``path``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    qwen2_5_tokenizer().save_pretrained(path)
    return path


@functools.lru_cache(maxsize=1)
def tiny_model_dir() -> str:
    """``write_tiny_model`` into a temporary folder, once per process (with verl's CPU platform selected)."""
    use_cpu_platform()
    return write_tiny_model(tempfile.mkdtemp(prefix="tiny_qwen2_"))


def new_engine(**options):
    """A fresh NTL engine (or ``engine_cls=...``) on the tiny model; every engine starts from the same weights."""
    return build_engine(tiny_model_dir(), **options)


@functools.lru_cache(maxsize=None)
def shared_engine(use_remove_padding: bool = True, use_dynamic_bsz: bool = False, max_token_len: int = 4096):
    """An engine shared by inference-only tests (never trained)."""
    return new_engine(use_remove_padding=use_remove_padding, use_dynamic_bsz=use_dynamic_bsz,
                      max_token_len=max_token_len)


def batch_for(engine, prompts, responses, **kwargs):
    return make_batch(prompts, responses, settings=engine_settings(engine), **kwargs)


def infer(engine, batch) -> dict:
    """The engine's model outputs for ``batch`` (nested tensors), as verl's worker gets them."""
    with engine.eval_mode():
        return engine.infer_batch(batch)["model_output"]


def plant_digit_logits(engine, digit_logits: torch.Tensor):
    """Make the model's logits at every position whose input token is ``MARKER`` have these 10 digit logits.

    Returns the hook handle (``.remove()`` it). Works for both input layouts, packed ``[1, N]`` and padded
    ``[B, L]``, since it matches the input ids the model receives.
    """
    columns = torch.tensor(DIGIT_IDS)

    def hook(module, args, kwargs, output):
        at_marker = kwargs["input_ids"] == MARKER
        logits = output.logits
        rows = logits[at_marker]
        rows[:, columns] = digit_logits.to(logits.dtype)
        logits[at_marker] = rows
        return output

    return engine.module.register_forward_hook(hook, with_kwargs=True)
