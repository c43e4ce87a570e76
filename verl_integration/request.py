"""What a batch asks of the NTL engine: the digit ids, the loss coefficient and the per-token NTL method.

The request travels as non-tensor data under ``NTL_REQUEST_KEY`` (in the v1 trainer: ``KVBatchMeta.extra_info``, which
verl copies into every worker's TensorDict and every micro-batch). A batch without it is processed exactly as plain
verl processes it. The per-token digit targets of the loss travel as the tensor field ``NTL_TARGETS_KEY``: nested
``[B, j_response]`` int64, aligned with ``responses`` (digit value 0..9, -100 where no target).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tensordict import TensorDict

from ntl_kernels import NUM_DIGITS

NTL_REQUEST_KEY = "ntl_request"
NTL_TARGETS_KEY = "ntl_targets"
LOSS_METHODS = ("nll", "was", "mse")  # per-token methods; "confidence" is a per-sample (reward) quantity


@dataclass(frozen=True)
class NTLRequest:
    """``digit_ids``: the 10 token ids of '0'..'9'; ``loss_coef``: weight of the NTL term added to verl's actor loss
    (0 adds nothing); ``loss_method``: per-token NTL method of that term."""

    digit_ids: tuple[int, ...]
    loss_coef: float = 0.0
    loss_method: str = "was"

    def __post_init__(self):
        if len(self.digit_ids) != NUM_DIGITS or len(set(self.digit_ids)) != NUM_DIGITS:
            raise ValueError(f"digit_ids must be 10 distinct token ids, got {self.digit_ids}")
        if not self.loss_coef >= 0.0 or self.loss_coef == float("inf"):
            raise ValueError(f"loss_coef must be a finite number >= 0, got {self.loss_coef}")
        if self.loss_method not in LOSS_METHODS:
            raise ValueError(f"loss_method must be one of {LOSS_METHODS}, got {self.loss_method!r}")

    def as_dict(self) -> dict:
        """Plain-python form for ``extra_info`` / non-tensor data (pickles across Ray)."""
        return asdict(self)

    @classmethod
    def of(cls, data: TensorDict) -> NTLRequest | None:
        """The request attached to ``data`` or None (a plain verl batch)."""
        from verl.utils import tensordict_utils as tu

        raw = tu.get_non_tensor_data(data=data, key=NTL_REQUEST_KEY, default=None)
        if raw is None:
            return None
        if isinstance(raw, NTLRequest):
            return raw
        return cls(digit_ids=tuple(int(i) for i in raw["digit_ids"]), loss_coef=float(raw["loss_coef"]),
                   loss_method=str(raw["loss_method"]))

    def attach(self, data: TensorDict) -> TensorDict:
        """Attach this request to ``data`` (in place) and return it."""
        from verl.utils import tensordict_utils as tu

        tu.assign_non_tensor_data(data, NTL_REQUEST_KEY, self.as_dict())
        return data
