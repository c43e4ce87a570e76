import pytest
import torch

from ntl_kernels import (
    QWEN2_5_DIGIT_IDS,
    digit_targets,
    digit_token_ids,
    qwen2_5_tokenizer,
    tokenizer_merges_digits,
)


class FakeTokenizer:
    """Encodes runs of up to ``merge`` digits as one token; ``split_digit`` encodes as two tokens."""

    def __init__(self, merge=1, split_digit=None, shared_id=False):
        self.merge, self.split_digit, self.shared_id = merge, split_digit, shared_id

    def encode(self, text, add_special_tokens=False):
        if self.split_digit is not None and text == str(self.split_digit):
            return [900, 901]
        if self.shared_id and text in ("3", "4"):
            return [42]
        return [100 + int(text[i : i + self.merge]) for i in range(0, len(text), self.merge)]


def test_qwen2_5_digits_are_15_to_24_and_never_merged():
    tokenizer = qwen2_5_tokenizer()
    assert digit_token_ids(tokenizer).tolist() == list(QWEN2_5_DIGIT_IDS)
    assert not tokenizer_merges_digits(tokenizer)
    assert tokenizer.encode("#### 186", add_special_tokens=False) == [820, 220, 16, 23, 21]


def test_digit_that_is_not_one_token_is_named():
    with pytest.raises(ValueError, match="digit '7'"):
        digit_token_ids(FakeTokenizer(split_digit=7))


def test_digits_sharing_a_token_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        digit_token_ids(FakeTokenizer(shared_id=True))


def test_tokenizer_merging_digits_is_refused_unless_allowed():
    merging = FakeTokenizer(merge=3)
    assert tokenizer_merges_digits(merging)
    with pytest.raises(ValueError, match="merges several digits"):
        digit_token_ids(merging)
    assert digit_token_ids(merging, allow_merged_digits=True).tolist() == list(range(100, 110))


def test_digit_targets_maps_digit_tokens_and_ignores_the_rest():
    ids = torch.tensor([30, 31, 32, 33, 34, 35, 36, 37, 38, 39])[torch.tensor([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])]
    labels = torch.tensor([[ids[0], 5, -100], [ids[9], ids[4], 1000]])
    assert digit_targets(labels, ids).tolist() == [[0, -100, -100], [9, 4, -100]]
    assert digit_targets(labels, ids, ignore_index=-1).tolist() == [[0, -1, -1], [9, 4, -1]]
    with pytest.raises(TypeError, match="labels"):
        digit_targets(labels.float(), ids)
