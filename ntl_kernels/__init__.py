"""Fused digit Number Token Loss kernels (Triton) with a pure-torch reference."""

from .hidden_digits import HiddenDigitOutput, digit_logits_from_hidden, digit_ntl_from_hidden
from .logprob_entropy_ntl import LogProbEntropyNTL, fused_logprob_entropy_ntl, logprob_entropy_ntl_reference
from .ntl_loss import NTLOutput, ntl_loss
from .reference import CONFIDENCE_FLOOR, MAX_NUMBER_TOKENS, METHODS, NUM_DIGITS, REDUCTIONS, ntl_loss_reference
from .tokens import (
    LLAMA3_NUMBER_TOKENS,
    LLAMA3_VOCAB_SIZE,
    QWEN2_5_DIGIT_IDS,
    NumberTokens,
    digit_targets,
    digit_token_ids,
    llama3_tokenizer,
    number_targets,
    number_tokens,
    qwen2_5_tokenizer,
    tokenizer_merges_digits,
)

__all__ = [
    "CONFIDENCE_FLOOR",
    "HiddenDigitOutput",
    "LLAMA3_NUMBER_TOKENS",
    "LLAMA3_VOCAB_SIZE",
    "LogProbEntropyNTL",
    "MAX_NUMBER_TOKENS",
    "METHODS",
    "NTLOutput",
    "NUM_DIGITS",
    "NumberTokens",
    "QWEN2_5_DIGIT_IDS",
    "REDUCTIONS",
    "digit_logits_from_hidden",
    "digit_ntl_from_hidden",
    "digit_targets",
    "digit_token_ids",
    "fused_logprob_entropy_ntl",
    "llama3_tokenizer",
    "logprob_entropy_ntl_reference",
    "ntl_loss",
    "ntl_loss_reference",
    "number_targets",
    "number_tokens",
    "qwen2_5_tokenizer",
    "tokenizer_merges_digits",
]
