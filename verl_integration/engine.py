"""verl's FSDP language-model engine, plus the digit statistics NTL needs, from the one pass that scores the logits.

``NTLFSDPEngine`` changes nothing for a batch without an ``NTLRequest`` (see ``request.py``). With one, each forward
also returns, next to verl's ``log_probs`` (and ``entropy`` when verl computes it) and with the same layout (nested
``[B, prompt + response]``, row t scored against token t + 1):

- ``digit_log_probs`` ``[B, j, 10]`` float32: log-softmax over the 10 digit logits after verl's temperature scaling
  (per sample), for the reward (``no_padding_2_padding`` / ``response_from_nested`` cut the response part);
- ``ntl`` ``[B, j]`` float32, when the batch carries ``ntl_targets``: the per-token NTL of the request's method
  against the target digit of the next token (0 on rows without a target, so prompt rows never count), for the loss.

Where they come from (never from a second forward pass):

- **one pass** (``fused_actor`` true, or auto where the op's Triton kernels run and the batch allows it; see
  ``_single_pass``): ``fused_logprob_entropy_ntl`` reads the
  model's logits once for the log-probs, the entropy, the digit log-probs and the NTL, and its backward writes the
  gradient of all of them once, into the logits' own buffer (see ``_single_pass_outputs`` for why that is safe);
- **verl's passes + a digit pass** (``fused_actor`` false, or auto where the batch asks verl for outputs the fused
  op does not give: ``calculate_sum_pi_squared``, top-k distillation): verl computes its outputs as it always does,
  then ``digits.digit_statistics`` reads the 10 digit columns;
- **hidden states** (verl's fused LM head, ``use_fused_kernels``: no logits exist): verl's fused kernel gives the
  log-probs and entropy, ``digit_ntl_from_hidden`` the digit outputs from the same final hidden states and LM-head
  weight (only its 10 digit rows are multiplied).

All three work in both of verl's layouts (remove-padding packed rows, possibly padded for ``pad_to_length`` and
sliced for Ulysses sequence parallelism, and padded ``[B, L, V]``); see ``ModelRows``. During training the actor loss
is wrapped by ``loss.NTLActorLoss`` so ``ntl_coef * NTL`` is added to verl's ``ppo_loss``.
"""

from __future__ import annotations

import contextlib

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.ulysses import ulysses_pad_and_slice_inputs
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine.utils import pad_packed_inputs

from ntl_kernels import NUM_DIGITS, digit_ntl_from_hidden, fused_logprob_entropy_ntl
from ntl_kernels.checks import use_triton

from .digits import IGNORE_INDEX, digit_statistics, sequence_targets
from .loss import NTLActorLoss
from .request import NTL_TARGETS_KEY, NTLRequest

# Per-batch settings under which verl wants outputs the one-pass op does not compute (the full logits for
# sum(pi^2), top-k distillation): "auto" then keeps verl's passes, an explicit fused_actor=true is an error.
SINGLE_PASS_BLOCKERS = ("calculate_sum_pi_squared", "distillation_use_topk", "distillation_only")


def _setting(micro_batch: TensorDict, key: str, default=False):
    return tu.get_non_tensor_data(data=micro_batch, key=key, default=default)


def _full_logits(output) -> torch.Tensor:
    """The model's logits; with tensor parallelism a DTensor sharded on the vocabulary, gathered as verl does."""
    logits = output.logits
    return logits.full_tensor() if hasattr(logits, "full_tensor") else logits


class ModelRows:
    """verl's packed rows (``N`` = sum of the sample lengths, the layout of its outputs) <-> the rows the model
    computed, flattened to ``[n, ...]``.

    - remove-padding: the model ran on the packed stream, right-padded by ``pad_to_length`` and, with Ulysses
      sequence parallelism, padded again and cut into this rank's slice; ``to_model`` repeats exactly what
      ``prepare_model_inputs`` does to verl's labels, ``to_packed`` is verl's own all-gather and unpad;
    - padded: the model ran on ``[B, L]``; row ``b * L + t`` is position t of sample b.
    """

    def __init__(self, engine: FSDPEngineWithLMHead, micro_batch: TensorDict, output_args: dict):
        self.engine = engine
        self.cu_seqlens = micro_batch["input_ids"].offsets()
        self.seq_lengths = self.cu_seqlens.diff()
        self.num_rows = int(self.cu_seqlens[-1])
        self.remove_padding = _setting(micro_batch, "use_remove_padding", default=True)
        if self.remove_padding:
            self.pad_size = output_args["pad_size"]
        else:
            width = int(self.seq_lengths.max())
            self.valid = torch.arange(width, device=self.cu_seqlens.device) < self.seq_lengths.unsqueeze(1)

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
        rows, _ = pad_packed_inputs(packed.unsqueeze(0), None, self.engine._get_packed_pad_size(self.num_rows),
                                    pad_value=fill)
        if self.engine.use_ulysses_sp:
            rows, _, _ = ulysses_pad_and_slice_inputs(
                rows, position_ids_rmpad=None, sp_size=self.engine.ulysses_sequence_parallel_size, pad_value=fill
            )
        return rows.squeeze(0)

    def to_packed(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` per-row outputs in the model's rows -> ``[N, ...]`` in verl's packed order."""
        if self.remove_padding:
            return self.engine._gather_and_unpad_packed(rows, self.pad_size)
        return rows.view(*self.valid.shape, *rows.shape[1:])[self.valid]

    def nested(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` model rows -> verl's nested ``[B, j, ...]`` output."""
        return torch.nested.nested_tensor_from_jagged(self.to_packed(rows), self.cu_seqlens)

    def labels(self, output_args: dict) -> torch.Tensor:
        """verl's labels (the packed input ids rolled by one: row t is scored against token t + 1) in model rows."""
        if self.remove_padding:
            return output_args["input_ids_rmpad_rolled"]
        return self.to_model(output_args["input_ids_rmpad_rolled"], IGNORE_INDEX)

    def temperature(self, output_args: dict) -> torch.Tensor:
        """verl's per-sample sampling temperature of each model row (1 on padding rows, as verl pads it)."""
        if self.remove_padding:
            return output_args["temperature_rmpad"]
        return output_args["temperature"].unsqueeze(1).expand(self.valid.shape).reshape(-1)

    def ntl_targets(self, micro_batch: TensorDict) -> torch.Tensor | None:
        """The batch's response-aligned ``ntl_targets`` as per-row targets in model rows (None without them)."""
        if NTL_TARGETS_KEY not in micro_batch.keys():
            return None
        response_targets = micro_batch[NTL_TARGETS_KEY]
        if not response_targets.is_nested:
            raise ValueError(f"{NTL_TARGETS_KEY} must be a nested [B, j_response] tensor aligned with responses")
        prompt_lengths = self.seq_lengths - response_targets.offsets().diff().to(self.seq_lengths.device)
        return self.to_model(sequence_targets(response_targets, prompt_lengths), IGNORE_INDEX)


class NTLFSDPEngine(FSDPEngineWithLMHead):
    """``FSDPEngineWithLMHead`` whose outputs also carry ``digit_log_probs`` and ``ntl`` for NTL batches."""

    _lm_head_input = None  # (final hidden states, LM head's digit rows) of the running forward, use_fused_kernels
    _digit_id_tensors = None  # {(digit ids, device): LongTensor}

    def forward_step(self, micro_batch: TensorDict, loss_function, forward_only):
        request = NTLRequest.of(micro_batch)
        if request is None:
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        if loss_function is not None and NTL_TARGETS_KEY in micro_batch.keys():
            loss_function = NTLActorLoss(loss_function, request)
        capture = contextlib.nullcontext()
        if _setting(micro_batch, "use_fused_kernels"):
            weight = self.module.get_output_embeddings().weight
            capture = self._capture_lm_head_input(self._digit_ids(request, weight.device))
        with capture:
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)

    def prepare_model_outputs(self, output, output_args, micro_batch: TensorDict, logits_processor_func):
        request = NTLRequest.of(micro_batch)
        if request is None:
            return super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        rows = ModelRows(self, micro_batch, output_args)
        if _setting(micro_batch, "use_fused_kernels"):
            model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
            model_output.update(self._hidden_digit_outputs(rows, output_args, micro_batch, request))
            return model_output
        if self._single_pass(request, micro_batch, output.logits):
            return self._single_pass_outputs(output, output_args, micro_batch, request, rows)
        model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        model_output.update(self._digit_pass_outputs(output, output_args, micro_batch, request, rows))
        return model_output

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
        result = fused_logprob_entropy_ntl(
            rows.flat(logits), rows.labels(output_args), self._digit_ids(request, logits.device),
            temperature=rows.temperature(output_args), ntl_targets=rows.ntl_targets(micro_batch),
            method=request.loss_method, ignore_index=IGNORE_INDEX, inplace_backward=True,
        )
        model_output = {"log_probs": rows.nested(result.log_probs)}
        if _setting(micro_batch, "calculate_entropy"):
            model_output["entropy"] = rows.nested(result.entropy)
        model_output.update(self._digit_outputs(rows, result.digit_log_probs.detach(), result.ntl))
        return model_output

    def _digit_pass_outputs(self, output, output_args, micro_batch, request: NTLRequest, rows: ModelRows) -> dict:
        """The digit outputs from the 10 digit columns of the logits verl has just scored (``fused_actor`` off)."""
        logits = _full_logits(output)
        stats = digit_statistics(
            rows.flat(logits), self._digit_ids(request, logits.device), temperature=rows.temperature(output_args),
            ntl_targets=rows.ntl_targets(micro_batch), method=request.loss_method,
        )
        return self._digit_outputs(rows, stats.digit_log_probs, stats.ntl)

    def _hidden_digit_outputs(self, rows: ModelRows, output_args, micro_batch, request: NTLRequest) -> dict:
        """The digit outputs from the final hidden states and the LM-head weight (verl's fused LM head)."""
        if self._lm_head_input is None:
            raise RuntimeError("use_fused_kernels: the decoder's final hidden states were not captured in this forward")
        hidden, digit_weight = self._lm_head_input
        hidden_rows = rows.flat(hidden).to(digit_weight.dtype)  # the LM head multiplies in its weight's dtype
        stats = digit_ntl_from_hidden(
            hidden_rows, digit_weight, torch.arange(NUM_DIGITS, device=hidden.device),
            temperature=rows.temperature(output_args),
            ntl_targets=rows.ntl_targets(micro_batch), method=request.loss_method, ignore_index=IGNORE_INDEX,
        )
        return self._digit_outputs(rows, stats.digit_log_probs.detach(), stats.ntl)

    @staticmethod
    def _digit_outputs(rows: ModelRows, digit_log_probs: torch.Tensor, ntl: torch.Tensor | None) -> dict:
        outputs = {"digit_log_probs": rows.nested(digit_log_probs)}
        if ntl is not None:
            outputs["ntl"] = rows.nested(ntl)
        return outputs

    def _digit_ids(self, request: NTLRequest, device) -> torch.Tensor:
        """The request's digit ids on ``device``, made once: copying them from the host every micro-batch would
        wait for the device each time."""
        if self._digit_id_tensors is None:
            self._digit_id_tensors = {}
        key = (request.digit_ids, str(device))
        if key not in self._digit_id_tensors:
            self._digit_id_tensors[key] = torch.tensor(request.digit_ids, dtype=torch.long, device=device)
        return self._digit_id_tensors[key]

    @contextlib.contextmanager
    def _capture_lm_head_input(self, digit_ids: torch.Tensor):
        """Keep the decoder's final hidden states and the LM head's 10 digit rows of the forward run inside this
        context (``_lm_head_input``).

        verl's fused LM head (``verl.models.transformers.dense_common.forward_with_*_backend``) multiplies
        ``self.model(...)[0]`` by ``self.lm_head.weight`` inside the model's forward and returns only log-probs and
        entropy. The digit rows are read inside the decoder's forward hook, while FSDP holds the weight unsharded
        (after the forward it frees it); their gradient reaches the weight through ``index_select`` like any
        other use of an FSDP parameter.
        """
        decoder = self.module.get_decoder()
        lm_head = self.module.get_output_embeddings()

        def keep(module, args, output):
            self._lm_head_input = (output[0], lm_head.weight.index_select(0, digit_ids))

        handle = decoder.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()
            self._lm_head_input = None
