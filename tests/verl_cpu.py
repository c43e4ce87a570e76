"""Test helpers for the verl integration on CPU: a tiny Qwen2 model on disk, engines, a planted digit distribution.

The CPU platform itself is ``verl_integration.inprocess.use_cpu_platform`` (explicit, never on import); these helpers
call it, so only the tests (and the CPU demo) switch verl to CPU.
"""

from __future__ import annotations

import functools
import tempfile
import types

import torch

from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from verl_integration.inprocess import build_engine, engine_settings, make_batch, use_cpu_platform

DIGIT_IDS = QWEN2_5_DIGIT_IDS  # '0'..'9' -> 15..24


def engine_has_pad_to_length() -> bool:
    """verl's engine pads packed micro-batches for ``pad_to_length`` (since 0.9.0)."""
    import dataclasses

    from verl.workers.config import FSDPEngineConfig

    return "pad_to_length" in {field.name for field in dataclasses.fields(FSDPEngineConfig)}
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


def new_engine(model_dir: str | None = None, **options):
    """A fresh NTL engine (or ``engine_cls=...``) on the tiny model (or ``model_dir``); every engine starts from the
    same weights."""
    model_dir = model_dir or tiny_model_dir()
    if not options.get("use_fused_kernels"):
        return build_engine(model_dir, **options)
    # verl 0.9.1's apply_monkey_patch installs its fused-LM-head forward on the model CLASS (Qwen2ForCausalLM), for
    # the whole process; give it to this engine's model only, so that other engines in the test process keep the
    # Hugging Face forward that returns logits.
    from transformers import Qwen2ForCausalLM

    hugging_face_forward = Qwen2ForCausalLM.forward
    try:
        engine = build_engine(model_dir, **options)
        fused_forward = Qwen2ForCausalLM.forward
    finally:
        Qwen2ForCausalLM.forward = hugging_face_forward
    engine.module.forward = types.MethodType(fused_forward, engine.module)
    return engine


@functools.lru_cache(maxsize=None)
def shared_engine(**options):
    """An engine shared by inference-only tests (never trained); ``options`` as ``build_engine``'s."""
    return new_engine(**options)


def batch_for(engine, prompts, responses, **kwargs):
    return make_batch(prompts, responses, settings=engine_settings(engine), **kwargs)


def infer(engine, batch) -> dict:
    """The engine's model outputs for ``batch`` (nested tensors), as verl's worker gets them."""
    with engine.eval_mode():
        return engine.infer_batch(batch)["model_output"]


def plant_digit_hidden(engine, digit_logits: torch.Tensor):
    """Make the model's 10 digit logits at every position whose input token is ``MARKER`` these: the final hidden
    state there becomes the (minimum-norm) one whose digit logits ``h @ W[digit_ids].T`` are ``digit_logits``.

    Planted in the hidden states, so it holds for the logits path and verl's fused LM head alike, and whether the LM
    head runs on every row or on the response rows only. Works for both input layouts, packed ``[1, N]`` and padded
    ``[B, L]``. Returns the hook handle (``.remove()`` it); register it before the forward so that the engine's own
    decoder hook sees the planted states.
    """
    lm_head = engine.module.get_output_embeddings()

    def hook(module, args, kwargs, output):
        at_marker = kwargs["input_ids"] == MARKER
        digit_rows = lm_head.weight[list(DIGIT_IDS)].detach()  # [10, d]
        hidden = output[0]
        hidden[at_marker] = (torch.linalg.pinv(digit_rows.double()) @ digit_logits.double()).to(hidden.dtype)
        return output

    return engine.module.get_decoder().register_forward_hook(hook, with_kwargs=True)


def digit_rows_in_place(digit_log_probs: torch.Tensor, batch, number_ids=DIGIT_IDS) -> list[torch.Tensor]:
    """The engine's ``digit_log_probs`` (nested ``[B, m, K]``: the rows of each response's number tokens only) put
    back at their response tokens: per sample ``[R, K]``, NaN rows at the tokens that are no number token."""
    rows = []
    for response, number_rows in zip(batch["responses"].unbind(), digit_log_probs.unbind(), strict=True):
        is_number = torch.isin(response, torch.tensor(number_ids, device=response.device))
        placed = number_rows.new_full((len(response), number_rows.shape[-1]), float("nan"))
        placed[is_number] = number_rows
        rows.append(placed)
    return rows
