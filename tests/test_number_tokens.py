"""Number-token sets (ntl_kernels.tokens): Llama-3's, built offline, and ids -> slots."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntl_kernels import (
    LLAMA3_NUMBER_TOKENS,
    LLAMA3_VOCAB_SIZE,
    QWEN2_5_DIGIT_IDS,
    NumberTokens,
    digit_targets,
    llama3_tokenizer,
    number_targets,
    number_tokens,
    qwen2_5_tokenizer,
)

SETTINGS = dict(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# GSM8K-style answers as a policy writes them (thousands separators, money, decimals, long numbers).
GSM8K_ANSWERS = [
    "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs a day.\n#### 18",
    "The total is $1,234.50 so each gets 1234.5/10 = 123.45 dollars.\n#### 123.45",
    "2024 - 1999 = 25 years, 25*12 = 300 months\n####300",
    "#### -1000007",
    "It costs 0.075 * 40000 = 3000.\n\n#### $3,000",
]


def _number_token_texts(tokenizer, text):
    pieces = [tokenizer.decode([token]) for token in tokenizer.encode(text, add_special_tokens=False)]
    return pieces, [piece for piece in pieces if any(c in "0123456789" for c in piece)]


@pytest.fixture(scope="module")
def llama3():
    return llama3_tokenizer(), number_tokens(llama3_tokenizer())


def test_llama3_tokenizer_has_its_vocabulary_specials_and_1110_number_tokens(llama3):
    tokenizer, numbers = llama3
    assert len(tokenizer) == LLAMA3_VOCAB_SIZE == 128_256
    assert tokenizer.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]) == [
        128_000, 128_001, 128_009]
    assert tokenizer.encode("hi") == [128_000, 6151]  # BOS prepended, as the Hub's Llama-3 tokenizer does
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.bos_token == "<|begin_of_text|>"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                         tokenize=False)
    assert chat == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")

    assert len(numbers) == LLAMA3_NUMBER_TOKENS == 1_110
    expected = [f"{v:0{width}d}" for width in (1, 2, 3) for v in range(10**width)]
    assert list(numbers.texts) == expected  # ordered by (length, value): slot == value for '0'..'9'
    assert numbers.ids[:10].tolist() == list(QWEN2_5_DIGIT_IDS)  # Llama-3's digits are ids 15..24 too
    assert numbers.values.dtype == torch.float32
    assert numbers.values[[7, 17, 117]].tolist() == [7.0, 7.0, 7.0]  # '7', '07', '007'
    assert [tokenizer.decode([i]) for i in numbers.ids.tolist()] == expected
    assert numbers.slot("099") == 10 + 100 + 99 and numbers.slot("1234") is None


def test_llama3_cuts_digit_runs_into_number_tokens_from_the_left(llama3):
    tokenizer, _ = llama3
    assert _number_token_texts(tokenizer, "1234")[0] == ["123", "4"]
    assert _number_token_texts(tokenizer, "x1000007y")[1] == ["100", "000", "7"]
    for answer in GSM8K_ANSWERS:
        _, numbers = _number_token_texts(tokenizer, answer)
        assert all(piece.isascii() and piece.isdigit() and len(piece) <= 3 for piece in numbers), numbers
        assert "".join(numbers) == "".join(c for c in answer if c in "0123456789")


@settings(max_examples=40, **SETTINGS)
@given(st.lists(st.sampled_from(list("0123456789 ,.$#-*\nab½²٣１") + ["12", "999", "####"]), max_size=30).map("".join))
def test_llama3_puts_every_ascii_digit_in_a_number_token(text):
    """The digit-only pre-token split: no token mixes ASCII digits with anything else, so the k-th number token of
    a response covers the next len(text_k) digits of its text (what the rewards' place alignment relies on)."""
    tokenizer = llama3_tokenizer()
    pieces, numbers = _number_token_texts(tokenizer, text)
    assert "".join(pieces) == text
    assert all(piece.isascii() and piece.isdigit() and len(piece) <= 3 for piece in numbers), numbers
    assert "".join(numbers) == "".join(c for c in text if c in "0123456789")


def test_qwen2_5_number_tokens_are_its_10_digits():
    numbers = number_tokens(qwen2_5_tokenizer())
    assert numbers.ids.tolist() == list(QWEN2_5_DIGIT_IDS) and numbers.is_digits
    assert numbers.values.tolist() == [float(v) for v in range(10)]


def test_number_targets_map_ids_to_slots_and_generalise_digit_targets(llama3):
    tokenizer, numbers = llama3
    labels = torch.tensor([tokenizer.encode("1234 x 007", add_special_tokens=False), [15, -100, 16, 24, 128_000]])
    targets = number_targets(labels, numbers.ids)
    assert [numbers.texts[t] if t >= 0 else None for t in targets[0].tolist()] == ["123", "4", None, None, "007"]
    assert targets[1].tolist() == [0, -100, 1, 9, -100]
    assert number_targets(labels, numbers.ids, ignore_index=-1)[0, 2].item() == -1
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS)
    assert torch.equal(digit_targets(labels, digit_ids), number_targets(labels, digit_ids))
    with pytest.raises(TypeError, match="integer tensor"):
        number_targets(labels.float(), numbers.ids)


@pytest.mark.parametrize(("ids", "texts", "match"), [
    (torch.tensor([[1, 2]]), ("1", "2"), "1-D integer"),
    (torch.tensor([1.0, 2.0]), ("1", "2"), "1-D integer"),
    (torch.tensor([1, 2]), ("1",), "one text per id"),
    (torch.tensor([1, 2]), ("1", "1234"), "1-3 ASCII digits"),
    (torch.tensor([1, 2]), ("1", "x"), "1-3 ASCII digits"),
    (torch.tensor([1, 1]), ("1", "2"), "distinct"),
    (torch.tensor([1, 2]), ("01", "01"), "distinct"),
])
def test_number_tokens_refuse_malformed_sets(ids, texts, match):
    with pytest.raises(ValueError, match=match):
        NumberTokens(ids, texts)


class _FourDigitTokenizer:
    """Merges digits, and its vocabulary has a 4-digit token the set could not hold."""

    def encode(self, text, add_special_tokens=False):
        return [hash(text) % 1000] if text.isdigit() else []

    def get_vocab(self):
        return {**{str(d): d for d in range(10)}, "2024": 50}


def test_a_token_of_more_than_3_digits_is_named():
    with pytest.raises(ValueError, match="4-digit string '2024'"):
        number_tokens(_FourDigitTokenizer())
