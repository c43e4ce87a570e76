"""verl's FSDP language-model engine, plus the digit statistics NTL needs, from the one pass that scores the logits.

``NTLFSDPEngine`` changes nothing for a batch without an ``NTLRequest`` (see ``request.py``). With one, each forward
also returns, next to verl's ``log_probs`` (and ``entropy`` when verl computes it) and with the same layout (nested
``[B, prompt + response]``, row t scored against token t + 1):

- ``digit_log_probs`` nested ``[B, m, K]`` float32: log-softmax over the K number-token logits after verl's
  temperature scaling, on the **number rows only**: the response rows whose token is one of the request's number
  tokens (``number_rows``), in response order (``m`` per sample). That is every row the reward and the loss read
  them at. Memory decided it: with Llama-3's K = 1,110 a row of the distribution is 4,440 bytes, so every row of a
  batch of 1,024 x 1,024-token responses would be 4.6 GB on the host (per-token log-probs: 4 MB); the number rows of
  math text are a few percent of it. The full ``[rows, K]`` of a micro-batch exists only transiently on the device
  (142 MB at 32k rows, against 8 GB of bf16 logits);
- ``ntl`` ``[B, j]`` float32, when the batch carries ``ntl_targets``: the per-token NTL of the request's method
  against the target slot of the next token (0 on rows without a target, so prompt rows never count), for the loss.

Where they come from (never from a second forward pass):

- **one pass** (``fused_actor`` true, or auto where the op's Triton kernels run and the batch allows it; see
  ``_single_pass``): ``fused_logprob_entropy_ntl`` reads the
  model's logits once for the log-probs, the entropy, the digit log-probs and the NTL, and its backward writes the
  gradient of all of them once, into the logits' own buffer (see ``_single_pass_outputs`` for why that is safe);
- **verl's passes + a digit pass** (``fused_actor`` false, or auto where the batch asks verl for outputs the fused
  op does not give: ``calculate_sum_pi_squared``, top-k distillation): verl computes its outputs as it always does,
  then ``digits.digit_statistics`` reads the K number-token columns;
- **hidden states** (verl's fused LM head, ``use_fused_kernels``: no logits exist): verl's fused kernel gives the
  log-probs and entropy, ``digit_ntl_from_hidden`` the digit outputs from the same final hidden states and LM-head
  weight (only its K number-token rows are multiplied).

All three work in both of verl's layouts (remove-padding packed rows, possibly padded for ``pad_to_length`` and
sliced for Ulysses sequence parallelism, and padded ``[B, L, V]``); see ``ModelRows``. During training the actor loss
is wrapped by ``loss.NTLActorLoss`` so ``ntl_coef * NTL`` is added to verl's ``ppo_loss``.

**Response rows only** (``ntl.response_rows_only``, every batch, NTL request or not: the actor update, its
``old_log_prob`` and the reference policy). verl's loss (``ppo_loss`` through ``no_padding_2_padding``) and its
trainer (``response_from_nested``) read, of each sample of ``P`` prompt and ``R`` response tokens, only the ``R``
rows ``P - 1 .. P + R - 2`` (row t scored against token t + 1). With the option on, the decoder still computes
every position, but its final hidden states are cut to those rows before the LM head (a forward hook on the decoder,
``_lm_head_hook``), so the ``[rows, d] x [d, V]`` product, the logits, their gradient and every pass over them
(verl's, the single pass, verl's fused LM head) cost the response rows only. The outputs keep verl's layout:
nested ``[B, P + R]`` with 0 on every other row. Every response row is computed, also the rows inside a tool span
of a multi-turn response (``response_mask`` 0 there, ``attention_mask`` 1): verl's loss masks them, but the
``old_log_prob`` / reference outputs stay those of today on every response position, and the NTL reward reads the
digit log-probs without knowing about tool spans. ``auto`` (the default) turns it on where only verl's
``ppo_loss`` (or no loss: ``old_log_prob``, reference) reads the outputs and the batch says which rows are
responses; it stays off for other losses (``sft_loss`` reads the prompt rows its ``loss_mask`` selects) and
distillation, where ``true`` is an error. Hugging Face's own ``logits_to_keep`` was not used: it takes the same
positions of every row of a padded ``[B, L]`` batch, and verl's fused LM head accepts and ignores it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.ulysses import ulysses_pad_and_slice_inputs
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.losses import ppo_loss

from ntl_kernels import digit_ntl_from_hidden, fused_logprob_entropy_ntl
from ntl_kernels.checks import use_triton

from .digits import IGNORE_INDEX, digit_statistics, sequence_targets
from .loss import NTLActorLoss
from .releases import verl_line
from .request import NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, RESPONSE_ROWS_KEY, NTLRequest, response_rows_choice

# Per-batch settings under which verl wants outputs the one-pass op does not compute (the full logits for
# sum(pi^2), top-k distillation): "auto" then keeps verl's passes, an explicit fused_actor=true is an error.
SINGLE_PASS_BLOCKERS = ("calculate_sum_pi_squared", "distillation_use_topk", "distillation_only")
# Per-batch settings under which verl's losses read rows outside the responses (the teacher's top-k on every row):
# response_rows_only "auto" then keeps every row, an explicit true is an error.
PROMPT_ROW_SETTINGS = ("distillation_use_topk", "distillation_only")
# verl's settings that prepare_model_outputs reads, copied onto the response-rows view of a micro-batch
OUTPUT_SETTINGS = ("pad_mode", "use_fused_kernels", "calculate_entropy", "calculate_sum_pi_squared",
                   "distillation_use_topk", "distillation_only")
KEPT_ROWS_KEY = "ntl_kept_rows"  # output_args: the model rows the LM head ran on (absent: all of them)
# output_args: True where no row of this rank is scored and the LM head ran on one placeholder row (see ModelRows)
PLACEHOLDER_KEY = "ntl_kept_placeholder"


def _setting(micro_batch: TensorDict, key: str, default=False):
    return tu.get_non_tensor_data(data=micro_batch, key=key, default=default)


def _full_logits(output) -> torch.Tensor:
    """The model's logits; with tensor parallelism a DTensor sharded on the vocabulary, gathered as verl does."""
    logits = output.logits
    return logits.full_tensor() if hasattr(logits, "full_tensor") else logits


def response_lengths(micro_batch: TensorDict) -> torch.Tensor | None:
    """``[B]`` int64 response length of each sample, as verl's ``no_padding_2_padding`` / ``response_from_nested``
    read it (nested ``responses`` or ``response_mask``; padded ``responses`` with the ``attention_mask``); None when
    the batch does not say (not an RL batch)."""
    keys = micro_batch.keys()
    for key in ("responses", "response_mask"):
        if key in keys and micro_batch[key].is_nested:
            return micro_batch[key].offsets().diff()
    if "responses" in keys and "attention_mask" in keys:
        return micro_batch["attention_mask"][:, -micro_batch["responses"].shape[1]:].sum(-1)
    return None


def scored_rows(sequence_lengths: torch.Tensor, response_lengths: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool over verl's packed rows: True on the rows verl scores a response token with.

    Sample b (``S = sequence_lengths[b]`` rows, of which the last ``R = response_lengths[b]`` tokens are the
    response) has its rows ``S - R - 1 .. S - 2`` scored: row t against token t + 1. ``R = 0`` scores none.
    """
    response_lengths = response_lengths.to(sequence_lengths.device)
    if bool((response_lengths > sequence_lengths - 1).any()) or bool((response_lengths < 0).any()):
        raise ValueError(
            "every sample needs at least one prompt token before its response (the first response token is scored "
            f"by the last prompt row); sequence lengths {sequence_lengths.tolist()}, "
            f"response lengths {response_lengths.tolist()}"
        )
    starts = torch.cumsum(sequence_lengths, 0) - sequence_lengths
    position = torch.arange(int(sequence_lengths.sum()), device=sequence_lengths.device)
    position = position - starts.repeat_interleave(sequence_lengths)
    first = (sequence_lengths - response_lengths - 1).repeat_interleave(sequence_lengths)
    last = (sequence_lengths - 2).repeat_interleave(sequence_lengths)
    return (position >= first) & (position <= last)


def number_rows(micro_batch: TensorDict, number_ids: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool over verl's packed rows: the scored rows (``scored_rows``) whose token is a number token.

    These are the rows ``digit_log_probs`` is kept at: sample b's, in order, are the rows of the number tokens of its
    response (tool output included), i.e. of ``responses[b][:R_b]`` where the token is in ``number_ids``.
    """
    input_ids = micro_batch["input_ids"]
    tokens = input_ids.values().roll(-1)  # row t is scored against token t + 1
    scored = scored_rows(input_ids.offsets().diff(), response_lengths(micro_batch))
    return scored & torch.isin(tokens, number_ids.to(tokens.device))


def _base_loss(loss_function):
    """The function under verl's ``partial(loss, config=...)`` and the NTL wrapper (None for no loss)."""
    while isinstance(loss_function, (NTLActorLoss, functools.partial)):
        loss_function = loss_function.base_loss if isinstance(loss_function, NTLActorLoss) else loss_function.func
    return loss_function


def prompt_row_readers(micro_batch: TensorDict, loss_function) -> list[str]:
    """Why this micro-batch's outputs may be read outside the response rows (empty: they are not)."""
    readers = [key for key in PROMPT_ROW_SETTINGS if _setting(micro_batch, key)]
    base_loss = _base_loss(loss_function)
    if base_loss is not None and base_loss is not ppo_loss:
        readers.append(f"the loss {getattr(base_loss, '__name__', base_loss)!r} (only verl's ppo_loss is known to "
                       "read the response rows only)")
    if response_lengths(micro_batch) is None:
        readers.append("no nested 'responses' / 'response_mask' (or padded 'responses' + 'attention_mask') saying "
                       "which rows are responses")
    return readers


@dataclasses.dataclass
class _Forward:
    """What one ``forward_step`` of ``NTLFSDPEngine`` decided and captured (None outside a forward step)."""

    response_rows_only: bool
    digit_ids: torch.Tensor | None = None  # LongTensor[K]: capture the LM head's number rows (verl's fused head)
    kept_rows: torch.Tensor | None = None  # the model rows the LM head runs on, set by prepare_model_inputs
    lm_head_input: tuple | None = None  # (final hidden states of the kept rows, LM head's number-token rows)


class ModelRows:
    """verl's packed rows (``N`` = sum of the sample lengths, the layout of its outputs) <-> the rows the model
    computed, flattened to ``[n, ...]``.

    - remove-padding: the model ran on the packed stream, right-padded by ``pad_to_length`` and, with Ulysses
      sequence parallelism, padded again and cut into this rank's slice; ``to_model`` repeats exactly what
      ``prepare_model_inputs`` does to verl's labels, ``to_packed`` is verl's own all-gather and unpad;
    - padded: the model ran on ``[B, L]``; row ``b * L + t`` is position t of sample b.

    With ``ntl.response_rows_only`` the LM head ran on ``kept`` (a LongTensor of model rows) only: the per-row
    inputs (``labels``, ``temperature``, ``ntl_targets``) are those of the kept rows, ``rows.flat`` of a model output
    has ``len(kept)`` rows, and ``nested`` puts them back in place with 0 on every other row. A micro-batch (or a
    Ulysses rank's slice) without a scored row keeps one placeholder row, whose outputs are multiplied by 0: verl's
    passes do not take 0 rows, and the loss still needs a graph through the LM head to run the backward.
    """

    def __init__(self, engine: FSDPEngineWithLMHead, micro_batch: TensorDict, output_args: dict):
        self.engine = engine
        self.kept = output_args.get(KEPT_ROWS_KEY)
        self.placeholder = output_args.get(PLACEHOLDER_KEY, False)
        self.cu_seqlens = micro_batch["input_ids"].offsets()
        self.seq_lengths = self.cu_seqlens.diff()
        self.num_rows = int(self.cu_seqlens[-1])
        self.remove_padding = _setting(micro_batch, "use_remove_padding", default=True)
        if self.remove_padding:
            self.pad_size = output_args.get("pad_size", 0)  # verl 0.8 sets it only under Ulysses
            self.num_model_rows = output_args["input_ids_rmpad_rolled"].shape[0]
        else:
            width = int(self.seq_lengths.max())
            self.valid = torch.arange(width, device=self.cu_seqlens.device) < self.seq_lengths.unsqueeze(1)
            self.num_model_rows = self.valid.numel()

    @staticmethod
    def flat(per_position: torch.Tensor) -> torch.Tensor:
        """The model's ``[1, n, X]`` or ``[B, L, X]`` output as ``[n, X]`` rows (a view of a contiguous output)."""
        return per_position.reshape(-1, per_position.shape[-1])

    def to_model(self, packed: torch.Tensor, fill) -> torch.Tensor:
        """``[N]`` per-row values -> ``[n]`` in the model's rows; ``fill`` on padding rows."""
        if not self.remove_padding:
            rows = packed.new_full(self.valid.shape, fill)
            rows[self.valid] = packed
            return rows.reshape(-1)
        pad_size = verl_line().packed_pad_size(self.engine, self.num_rows)
        rows = torch.nn.functional.pad(packed.unsqueeze(0), (0, pad_size), value=fill)
        if self.engine.use_ulysses_sp:
            rows, _, _ = ulysses_pad_and_slice_inputs(
                rows, position_ids_rmpad=None, sp_size=self.engine.ulysses_sequence_parallel_size, pad_value=fill
            )
        return rows.squeeze(0)

    def to_packed(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` per-row outputs in the model's rows -> ``[N, ...]`` in verl's packed order."""
        if self.remove_padding:
            return verl_line().gather_and_unpad(self.engine, rows, self.pad_size)
        return rows.view(*self.valid.shape, *rows.shape[1:])[self.valid]

    def computed(self, model_rows: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` per-model-row values -> those of the rows the LM head ran on."""
        return model_rows if self.kept is None else model_rows[self.kept]

    def expand(self, computed: torch.Tensor) -> torch.Tensor:
        """The LM head's rows' ``[k, ...]`` values -> ``[n, ...]`` model rows, 0 on the rows it skipped."""
        if self.kept is None:
            return computed
        rows = computed.new_zeros(self.num_model_rows, *computed.shape[1:])
        return rows.index_copy(0, self.kept, computed * 0 if self.placeholder else computed)

    def nested(self, rows: torch.Tensor) -> torch.Tensor:
        """The LM head's rows' ``[k, ...]`` outputs -> verl's nested ``[B, j, ...]`` output."""
        return torch.nested.nested_tensor_from_jagged(self.to_packed(self.expand(rows)), self.cu_seqlens)

    def nested_selection(self, rows: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """The LM head's rows' ``[k, ...]`` outputs at the packed rows ``selected [N]`` (bool) only, per sample:
        nested ``[B, m, ...]`` (``m`` = the sample's selected rows, in order)."""
        packed = self.to_packed(self.expand(rows))
        sample = torch.repeat_interleave(torch.arange(self.seq_lengths.numel(), device=selected.device),
                                         self.seq_lengths.to(selected.device))
        counts = torch.bincount(sample[selected], minlength=self.seq_lengths.numel())
        offsets = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
        return torch.nested.nested_tensor_from_jagged(packed[selected.to(packed.device)], offsets.to(packed.device))

    def labels(self, output_args: dict) -> torch.Tensor:
        """verl's labels (the packed input ids rolled by one: row t is scored against token t + 1) of the LM head's
        rows."""
        if self.remove_padding:
            return self.computed(output_args["input_ids_rmpad_rolled"])
        return self.computed(self.to_model(output_args["input_ids_rmpad_rolled"], IGNORE_INDEX))

    def temperature(self, output_args: dict) -> torch.Tensor:
        """verl's per-sample sampling temperature of each of the LM head's rows (1 on padding rows, as verl pads)."""
        if self.remove_padding:
            return self.computed(output_args["temperature_rmpad"])
        return self.computed(output_args["temperature"].unsqueeze(1).expand(self.valid.shape).reshape(-1))

    def ntl_targets(self, micro_batch: TensorDict) -> torch.Tensor | None:
        """The batch's response-aligned ``ntl_targets`` as per-row targets of the LM head's rows (None without)."""
        return self._response_field(micro_batch, NTL_TARGETS_KEY, IGNORE_INDEX)

    def ntl_weights(self, micro_batch: TensorDict) -> torch.Tensor | None:
        """The batch's response-aligned ``ntl_weights`` (place weighting) as per-row weights of the LM head's rows,
        1 on every other row (None without)."""
        return self._response_field(micro_batch, NTL_WEIGHTS_KEY, 1.0)

    def _response_field(self, micro_batch: TensorDict, key: str, fill) -> torch.Tensor | None:
        if key not in micro_batch.keys():
            return None
        response_values = micro_batch[key]
        if not response_values.is_nested:
            raise ValueError(f"{key} must be a nested [B, j_response] tensor aligned with responses")
        prompt_lengths = self.seq_lengths - response_values.offsets().diff().to(self.seq_lengths.device)
        return self.computed(self.to_model(sequence_targets(response_values, prompt_lengths, fill), fill))

    def scored(self, micro_batch: TensorDict) -> torch.Tensor:
        """LongTensor of the model rows verl scores a response token with (``scored_rows`` in model rows)."""
        packed = scored_rows(self.seq_lengths, response_lengths(micro_batch)).long()
        return self.to_model(packed, 0).nonzero().squeeze(1)


class NTLFSDPEngine(FSDPEngineWithLMHead):
    """``FSDPEngineWithLMHead`` whose outputs also carry ``digit_log_probs`` and ``ntl`` for NTL batches, and whose LM
    head runs on the response rows only where ``ntl.response_rows_only`` allows it (see the module docstring)."""

    _forward: _Forward | None = None  # the running forward_step's decisions and captures
    _number_set_tensors = None  # {(ids, texts, device): (ids LongTensor, values FloatTensor)}

    def forward_step(self, micro_batch: TensorDict, loss_function, forward_only):
        request = NTLRequest.of(micro_batch)
        forward = _Forward(response_rows_only=self._response_rows_only(micro_batch, loss_function))
        if request is None and not forward.response_rows_only:
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        if request is not None and loss_function is not None and NTL_TARGETS_KEY in micro_batch.keys():
            loss_function = NTLActorLoss(loss_function, request)
        if request is not None and _setting(micro_batch, "use_fused_kernels"):
            forward.digit_ids = self._number_set(request, self.module.get_output_embeddings().weight.device)[0]
        self._forward = forward
        try:
            with self._lm_head_hook(forward):
                return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        finally:
            self._forward = None

    @staticmethod
    def _response_rows_only(micro_batch: TensorDict, loss_function) -> bool:
        """Whether this micro-batch's LM head runs on the response rows only (``ntl.response_rows_only``)."""
        choice = response_rows_choice(micro_batch)
        if choice is False:
            return False
        readers = prompt_row_readers(micro_batch, loss_function)
        if readers and choice is True:
            raise ValueError(
                f"ntl.response_rows_only=true ({RESPONSE_ROWS_KEY}), but this batch may read outputs outside the "
                f"response rows: {'; '.join(readers)}. Set ntl.response_rows_only=auto (or false)"
            )
        return not readers

    def prepare_model_inputs(self, micro_batch: TensorDict):
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        forward = self._forward
        if forward is not None and forward.response_rows_only:
            rows = ModelRows(self, micro_batch, output_args)
            kept = rows.scored(micro_batch)
            output_args[PLACEHOLDER_KEY] = kept.numel() == 0
            if output_args[PLACEHOLDER_KEY]:
                kept = kept.new_zeros(1)
            if _setting(micro_batch, "use_fused_kernels"):
                # verl's fused head scores the kept hidden rows against these labels (in both layouts: on the cut
                # rows it cannot roll the input ids itself)
                model_inputs["shift_labels"] = rows.labels(output_args)[kept].unsqueeze(0)
            forward.kept_rows = output_args[KEPT_ROWS_KEY] = kept
        return model_inputs, output_args

    def prepare_model_outputs(self, output, output_args, micro_batch: TensorDict, logits_processor_func):
        request = NTLRequest.of(micro_batch)
        if request is None and KEPT_ROWS_KEY not in output_args:
            return super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        rows = ModelRows(self, micro_batch, output_args)
        if request is None:
            return self._verl_outputs(output, output_args, micro_batch, logits_processor_func, rows)
        if _setting(micro_batch, "use_fused_kernels"):
            model_output = self._verl_outputs(output, output_args, micro_batch, logits_processor_func, rows)
            model_output.update(self._hidden_digit_outputs(rows, output_args, micro_batch, request))
            return model_output
        if self._single_pass(request, micro_batch, output.logits):
            return self._single_pass_outputs(output, output_args, micro_batch, request, rows)
        model_output = self._verl_outputs(output, output_args, micro_batch, logits_processor_func, rows)
        model_output.update(self._digit_pass_outputs(output, output_args, micro_batch, request, rows))
        return model_output

    def _verl_outputs(self, output, output_args, micro_batch, logits_processor_func, rows: ModelRows) -> dict:
        """verl's own ``prepare_model_outputs``; on the LM head's rows only when it ran on the response rows.

        There verl's passes see the ``k`` computed rows as one packed sequence of this rank (no padding, no
        Ulysses gather: each rank has its own ``k``), and ``rows.nested`` puts their outputs back in verl's layout.
        """
        if rows.kept is None:
            return super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        kept_rows = rows.kept.shape[0]
        view = TensorDict({"input_ids": torch.nested.nested_tensor_from_jagged(
            rows.kept, rows.kept.new_tensor([0, kept_rows]))}, batch_size=[1])
        tu.assign_non_tensor(view, use_remove_padding=True,
                             **{key: _setting(micro_batch, key) for key in OUTPUT_SETTINGS
                                if _setting(micro_batch, key, None) is not None})
        view_args = {"temperature_is_one": output_args.get("temperature_is_one", False),
                     "input_ids_rmpad_rolled": rows.labels(output_args),
                     "temperature_rmpad": rows.temperature(output_args), "pad_size": 0}
        use_ulysses_sp, self.use_ulysses_sp = self.use_ulysses_sp, False
        try:
            model_output = super().prepare_model_outputs(output, view_args, view, logits_processor_func)
        finally:
            self.use_ulysses_sp = use_ulysses_sp
        return {key: rows.nested(value.values()) for key, value in model_output.items()}
    @staticmethod
    def _single_pass(request: NTLRequest, micro_batch: TensorDict, logits: torch.Tensor) -> bool:
        """Whether this micro-batch's outputs come from one ``fused_logprob_entropy_ntl`` pass."""
        if request.fused_actor is False:
            return False
        blockers = [key for key in SINGLE_PASS_BLOCKERS if _setting(micro_batch, key)]
        if blockers and request.fused_actor is True:
            raise ValueError(
                f"ntl.fused_actor=true, but this batch asks verl for {blockers}, which need verl's own passes over "
                "the logits; set ntl.fused_actor=auto (or false)"
            )
        # "auto" takes the single pass where its Triton kernels run (CUDA, or the CPU under TRITON_INTERPRET=1);
        # elsewhere the op runs its plain-torch reference, which reads and allocates no less than verl's passes.
        return not blockers and (request.fused_actor is True or use_triton(logits))

    def _single_pass_outputs(self, output, output_args, micro_batch, request: NTLRequest, rows: ModelRows) -> dict:
        """verl's ``log_probs`` / ``entropy`` and the digit outputs from one read of the logits.

        The backward writes the logits' gradient into the logits' own buffer (``inplace_backward``). Safe in verl
        0.9.1's ``FSDPEngineWithLMHead``: ``output.logits`` is the LM head's output (``Qwen2ForCausalLM.forward``
        and the other Hugging Face causal LMs return ``self.lm_head(hidden)`` uncast), a ``Linear`` whose backward
        reads its input and weight, never its output; the only other readers of the logits in ``forward_step`` are
        verl's ``prepare_model_outputs`` passes (temperature copy, entropy, log-prob, sum(pi^2), distillation),
        which this path replaces, and verl itself passes ``inplace_backward=True`` to ``logprobs_from_logits`` on
        the same buffer when it computes no entropy at temperature 1.
        """
        logits = _full_logits(output)
        number_ids, number_values = self._number_set(request, logits.device)
        result = fused_logprob_entropy_ntl(
            rows.flat(logits), rows.labels(output_args), number_ids, number_values=number_values,
            temperature=rows.temperature(output_args), ntl_targets=rows.ntl_targets(micro_batch),
            weights=rows.ntl_weights(micro_batch), method=request.loss_method, ignore_index=IGNORE_INDEX,
            inplace_backward=True,
        )
        model_output = {"log_probs": rows.nested(result.log_probs)}
        if _setting(micro_batch, "calculate_entropy"):
            model_output["entropy"] = rows.nested(result.entropy)
        model_output.update(self._digit_outputs(rows, micro_batch, number_ids, result.digit_log_probs.detach(),
                                                result.ntl))
        return model_output

    def _digit_pass_outputs(self, output, output_args, micro_batch, request: NTLRequest, rows: ModelRows) -> dict:
        """The digit outputs from the K number-token columns of the logits verl has just scored (``fused_actor``
        off)."""
        logits = _full_logits(output)
        number_ids, number_values = self._number_set(request, logits.device)
        temperature = rows.temperature(output_args)
        if verl_line().LOGITS_SCALED_IN_PLACE:  # verl's passes have already divided these logits by it
            temperature = torch.ones_like(temperature)
        stats = digit_statistics(
            rows.flat(logits), number_ids, number_values=number_values, temperature=temperature,
            ntl_targets=rows.ntl_targets(micro_batch), weights=rows.ntl_weights(micro_batch),
            method=request.loss_method,
        )
        return self._digit_outputs(rows, micro_batch, number_ids, stats.digit_log_probs, stats.ntl)

    def _hidden_digit_outputs(self, rows: ModelRows, output_args, micro_batch, request: NTLRequest) -> dict:
        """The digit outputs from the final hidden states and the LM-head weight (verl's fused LM head)."""
        if self._forward is None or self._forward.lm_head_input is None:
            raise RuntimeError("use_fused_kernels: the decoder's final hidden states were not captured in this forward")
        hidden, digit_weight = self._forward.lm_head_input
        hidden_rows = rows.flat(hidden).to(digit_weight.dtype)  # the LM head multiplies in its weight's dtype
        number_ids, number_values = self._number_set(request, hidden.device)
        stats = digit_ntl_from_hidden(
            hidden_rows, digit_weight, torch.arange(len(number_ids), device=hidden.device),
            number_values=number_values, temperature=rows.temperature(output_args),
            ntl_targets=rows.ntl_targets(micro_batch), weights=rows.ntl_weights(micro_batch),
            method=request.loss_method, ignore_index=IGNORE_INDEX,
        )
        return self._digit_outputs(rows, micro_batch, number_ids, stats.digit_log_probs.detach(), stats.ntl)

    @staticmethod
    def _digit_outputs(rows: ModelRows, micro_batch: TensorDict, number_ids: torch.Tensor,
                       digit_log_probs: torch.Tensor, ntl: torch.Tensor | None) -> dict:
        outputs = {"digit_log_probs": rows.nested_selection(digit_log_probs, number_rows(micro_batch, number_ids))}
        if ntl is not None:
            outputs["ntl"] = rows.nested(ntl)
        return outputs

    def _number_set(self, request: NTLRequest, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The request's number-token ids (int64) and values (float32) on ``device``, made once: copying them from
        the host every micro-batch would wait for the device each time."""
        if self._number_set_tensors is None:
            self._number_set_tensors = {}
        key = (request.digit_ids, request.number_texts, str(device))
        if key not in self._number_set_tensors:
            self._number_set_tensors[key] = (torch.tensor(request.digit_ids, dtype=torch.long, device=device),
                                             torch.tensor(request.number_values, dtype=torch.float32, device=device))
        return self._number_set_tensors[key]

    @contextlib.contextmanager
    def _lm_head_hook(self, forward: _Forward):
        """A forward hook on the decoder, inside this context, that hands the LM head the kept rows only and keeps
        what verl's fused LM head hides.

        - ``forward.kept_rows`` (set by ``prepare_model_inputs``): the decoder's final hidden states ``[1, n, d]``
          or ``[B, L, d]`` are replaced by those rows, ``[1, k, d]``; the causal LM then runs its LM head on them
          (``Qwen2ForCausalLM.forward`` and the other Hugging Face causal LMs, and verl's fused-head forwards
          ``dense_common.forward_with_*_backend``, all take ``self.model(...)[0]`` as the LM head's input). The
          gradient reaches the skipped positions' hidden states as 0 through the index, as verl's loss, which never
          reads those rows, gives them today.
        - ``forward.digit_ids`` (verl's fused LM head with an NTL request): ``forward.lm_head_input`` keeps the (cut)
          hidden states and the LM head's K number-token rows. verl's fused LM head multiplies the hidden states by
          ``self.lm_head.weight`` inside the model's forward and returns only log-probs and entropy. The digit rows
          are read inside the hook, while FSDP holds the weight unsharded (after the forward it frees it); their
          gradient reaches the weight through ``index_select`` like any other use of an FSDP parameter.
        """
        lm_head = self.module.get_output_embeddings()

        def hook(module, args, output):
            hidden = output[0]
            if forward.kept_rows is not None:
                hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, forward.kept_rows).unsqueeze(0)
                if isinstance(output, tuple):
                    output = (hidden, *output[1:])
                else:
                    output.last_hidden_state = hidden
            if forward.digit_ids is not None:
                forward.lm_head_input = (hidden, lm_head.weight.index_select(0, forward.digit_ids))
            return output

        handle = self.module.get_decoder().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def register_engine() -> None:
    """Replace verl's ``FSDPEngineWithLMHead`` by ``NTLFSDPEngine`` wherever it is registered (idempotent)."""
    for device_to_engine in EngineRegistry._engines.get("language_model", {}).values():
        for device, engine_cls in device_to_engine.items():
            if engine_cls is FSDPEngineWithLMHead:
                device_to_engine[device] = NTLFSDPEngine
