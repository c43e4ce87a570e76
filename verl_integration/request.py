"""What a batch asks of the NTL engine: the number tokens (ids and texts), the loss coefficient, the per-token NTL method and whether the
actor computes everything in one pass over the logits (``fused_actor``); and, for every batch, on which rows the LM
head runs (``ntl.response_rows_only``, under ``RESPONSE_ROWS_KEY``).

The request travels as non-tensor data under ``NTL_REQUEST_KEY`` (in the v1 trainer: ``KVBatchMeta.extra_info``, which
verl copies into every worker's TensorDict and every micro-batch). A batch without it is processed exactly as plain
verl processes it. The per-token digit targets of the loss travel as the tensor field ``NTL_TARGETS_KEY``: nested
``[B, j_response]`` int64, aligned with ``responses`` (a slot 0..K-1 of the number-token set, -100 where no target;
with the 10 digits a slot is the digit).

``RESPONSE_ROWS_KEY`` is a separate non-tensor setting, read for every batch, with or without a request (the
reference policy's batches carry none): ``True`` runs the LM head and the passes over the logits on the response
rows only, ``False`` on every packed row as verl does, ``"auto"`` (also when the key is absent) on the response rows
wherever nothing reads the prompt rows' outputs (see ``engine.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tensordict import TensorDict

from ntl_kernels import NUM_DIGITS

MAX_NUMBER_TOKENS = 2048  # the kernels' widest number-token block
DIGIT_TEXTS = tuple(str(digit) for digit in range(NUM_DIGITS))

NTL_REQUEST_KEY = "ntl_request"
NTL_TARGETS_KEY = "ntl_targets"
DIGIT_LOG_PROBS_KEY = "digit_log_probs"  # the actor's output: each response's number-token log-prob rows
NTL_WEIGHTS_KEY = "ntl_weights"  # optional: nested [B, j_response] float32 weight of each target (place weighting)
LOSS_METHODS = ("nll", "was", "mse")  # per-token methods; "confidence" is a per-sample (reward) quantity
RESPONSE_ROWS_KEY = "ntl_response_rows_only"
AUTO_OR_BOOL = ("auto", True, False)  # the values of ntl.fused_actor and ntl.response_rows_only


def is_auto_or_bool(value) -> bool:
    """``value`` is one of ``AUTO_OR_BOOL`` (a bool, not any truthy number, or the string "auto")."""
    return isinstance(value, bool) or value == "auto"


def response_rows_choice(data: TensorDict):
    """The batch's ``RESPONSE_ROWS_KEY`` setting ("auto" when absent); a ValueError for anything but auto/true/false."""
    from verl.utils import tensordict_utils as tu

    value = tu.get_non_tensor_data(data=data, key=RESPONSE_ROWS_KEY, default="auto")
    if not is_auto_or_bool(value):
        raise ValueError(f"{RESPONSE_ROWS_KEY} (ntl.response_rows_only) must be one of {AUTO_OR_BOOL}, got {value!r}")
    return value


@dataclass(frozen=True)
class NTLRequest:
    """``digit_ids``: the K token ids of the number-token set (the 10 digits '0'..'9' in digit order, or every 1-3
    digit token of a tokenizer that merges digits, see ``ntl_kernels.number_tokens``), ``number_texts`` their digit
    strings (the value of slot k is ``int(number_texts[k])``); ``loss_coef``: weight of the NTL term added to verl's actor loss
    (0 adds nothing); ``loss_method``: per-token NTL method of that term; ``fused_actor``: ``True`` computes verl's
    log-probs and entropy and the digit outputs in one pass over the logits (an error where the batch's settings
    rule it out), ``False`` keeps verl's own passes and adds a digit-column pass, ``"auto"`` is ``True`` wherever the
    op's Triton kernels run and the batch's settings allow it (see ``engine.py``)."""

    digit_ids: tuple[int, ...]
    number_texts: tuple[str, ...] = DIGIT_TEXTS
    loss_coef: float = 0.0
    loss_method: str = "was"
    fused_actor: bool | str = "auto"

    def __post_init__(self):
        count = len(self.digit_ids)
        if not 1 <= count <= MAX_NUMBER_TOKENS or len(set(self.digit_ids)) != count:
            raise ValueError(f"digit_ids must be 1..{MAX_NUMBER_TOKENS} distinct token ids, got {count} "
                             f"({len(set(self.digit_ids))} distinct)")
        if len(self.number_texts) != count or not all(t.isascii() and t.isdigit() for t in self.number_texts):
            raise ValueError(f"number_texts must be {count} strings of ASCII digits (one per digit id), got "
                             f"{self.number_texts[:12]!r}{'...' if len(self.number_texts) > 12 else ''}")
        if not self.loss_coef >= 0.0 or self.loss_coef == float("inf"):
            raise ValueError(f"loss_coef must be a finite number >= 0, got {self.loss_coef}")
        if self.loss_method not in LOSS_METHODS:
            raise ValueError(f"loss_method must be one of {LOSS_METHODS}, got {self.loss_method!r}")
        if not is_auto_or_bool(self.fused_actor):
            raise ValueError(f"fused_actor must be one of {AUTO_OR_BOOL}, got {self.fused_actor!r}")

    @property
    def number_values(self) -> tuple[float, ...]:
        """The value of each slot: ``int(number_texts[k])`` ('007' and '7' are both 7)."""
        return tuple(float(int(text)) for text in self.number_texts)

    def as_dict(self) -> dict:
        """Plain-python form for ``extra_info`` / non-tensor data (pickles across Ray)."""
        return asdict(self)

    @classmethod
    def of(cls, data: TensorDict) -> NTLRequest | None:
        """The request attached to ``data`` or None (a plain verl batch)."""
        from verl.utils import tensordict_utils as tu

        return cls.from_raw(tu.get_non_tensor_data(data=data, key=NTL_REQUEST_KEY, default=None))

    @classmethod
    def from_raw(cls, raw) -> NTLRequest | None:
        """The request as it travels with a batch (``as_dict()``, a request, or None: no request)."""
        if raw is None or isinstance(raw, NTLRequest):
            return raw
        if not hasattr(raw, "get"):
            raise TypeError(f"{NTL_REQUEST_KEY} must be NTLRequest.as_dict() (a dict), got {type(raw)}")
        return cls(digit_ids=tuple(int(i) for i in raw["digit_ids"]),
                   number_texts=tuple(str(t) for t in raw.get("number_texts", DIGIT_TEXTS)),
                   loss_coef=float(raw["loss_coef"]),
                   loss_method=str(raw["loss_method"]), fused_actor=raw.get("fused_actor", "auto"))

    def attach(self, data: TensorDict) -> TensorDict:
        """Attach this request to ``data`` (in place) and return it."""
        from verl.utils import tensordict_utils as tu

        tu.assign_non_tensor_data(data, NTL_REQUEST_KEY, self.as_dict())
        return data
