"""The tokenizer and the policy: the real Qwen2.5 (or Llama-3) tokenizer with a tiny seeded Qwen2 (or Llama) model,
or a local checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

# Qwen2.5's real embedding / lm_head width: the tokenizer's ids (specials up to 151,645) all fit, and digits stay
# ids 15..24. Kept for the tiny model too: the extra cost is in the lm_head matmul, which a small hidden size keeps
# cheap (about 0.4 s for a 16 x 90-token training step on 2 CPU cores at hidden size 64).
QWEN2_5_VOCAB_SIZE = 151_936
# Llama-3's embedding / lm_head width: its 128,000 BPE tokens and 256 specials. Numbers are cut into tokens of up to
# 3 digits ('0'..'999', leading zeros included): 1,110 number tokens instead of 10.
LLAMA3_VOCAB_SIZE = 128_256
TOKENIZERS = ("qwen2.5", "llama3")
# Attention heads of the tiny policy (grouped-query: 2 key/value heads shared by 4 query heads). Each head gets
# hidden_size / TINY_ATTENTION_HEADS channels, an even number: rotary position embeddings rotate channel pairs.
TINY_ATTENTION_HEADS = 4
TINY_KEY_VALUE_HEADS = 2
TINY_HIDDEN_SIZE_MULTIPLE = 2 * TINY_ATTENTION_HEADS


def load_tokenizer(model_path: Path | None, tokenizer_name: str = "qwen2.5"):
    """The tokenizer of ``model_path`` (a local Hugging Face checkpoint), or, when None, the real tokenizer
    ``tokenizer_name`` (one of ``TOKENIZERS``) built offline."""
    if model_path is None:
        from ntl_kernels import llama3_tokenizer, qwen2_5_tokenizer

        if tokenizer_name not in TOKENIZERS:
            raise ValueError(f"tokenizer_name must be one of {TOKENIZERS}, got {tokenizer_name!r}")
        return qwen2_5_tokenizer() if tokenizer_name == "qwen2.5" else llama3_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))


def tiny_qwen2_config(*, hidden_size: int = 64, num_layers: int = 2, vocab_size: int = QWEN2_5_VOCAB_SIZE):
    """A Qwen2-architecture config small enough to train on a CPU in minutes (fp32); ``hidden_size`` a multiple of
    ``TINY_HIDDEN_SIZE_MULTIPLE`` (else ValueError).

    The input embedding and the LM head are separate matrices (``tie_word_embeddings=False``, as in the larger
    Qwen2.5 models): tied, every row of the 151,936 x hidden matrix gets a gradient from the softmax at every step,
    and the warm-up learns far more slowly (greedy exact match ~0.14 after 300 steps against ~0.4 untied).
    """
    from transformers import Qwen2Config

    if hidden_size < 1 or hidden_size % TINY_HIDDEN_SIZE_MULTIPLE:
        raise ValueError(f"hidden_size must be a positive multiple of {TINY_HIDDEN_SIZE_MULTIPLE} ("
                         f"{TINY_ATTENTION_HEADS} attention heads of an even size), got {hidden_size}")
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=TINY_ATTENTION_HEADS,
        num_key_value_heads=TINY_KEY_VALUE_HEADS,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=151_643,
        eos_token_id=151_645,
        pad_token_id=151_643,
        torch_dtype="float32",
    )


def tiny_llama_config(tokenizer, *, hidden_size: int = 64, num_layers: int = 2):
    """``tiny_qwen2_config``'s sizes as a Llama config over Llama-3's vocabulary, with ``tokenizer``'s special ids."""
    from transformers import LlamaConfig

    qwen2 = tiny_qwen2_config(hidden_size=hidden_size, num_layers=num_layers)
    return LlamaConfig(
        vocab_size=LLAMA3_VOCAB_SIZE,
        hidden_size=qwen2.hidden_size,
        intermediate_size=qwen2.intermediate_size,
        num_hidden_layers=qwen2.num_hidden_layers,
        num_attention_heads=qwen2.num_attention_heads,
        num_key_value_heads=qwen2.num_key_value_heads,
        max_position_embeddings=qwen2.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def build_policy(model_path: Path | None, *, seed: int, device: str, hidden_size: int = 64, num_layers: int = 2,
                 tokenizer_name: str = "qwen2.5"):
    """The policy model on ``device``: ``model_path``'s weights (float32), or a tiny model seeded by ``seed`` for
    the tokenizer ``tokenizer_name``: Qwen2 for Qwen2.5's, Llama for Llama-3's."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

    if model_path is None and tokenizer_name == "llama3":
        torch.manual_seed(seed)
        config = tiny_llama_config(load_tokenizer(None, "llama3"), hidden_size=hidden_size, num_layers=num_layers)
        model = LlamaForCausalLM(config)
    elif model_path is None:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(tiny_qwen2_config(hidden_size=hidden_size, num_layers=num_layers))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model.to(device)
