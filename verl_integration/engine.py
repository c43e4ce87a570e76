"""verl's FSDP language-model engine, plus the digit statistics NTL needs, from the logits verl already computes.

``NTLFSDPEngine`` changes nothing for a batch without an ``NTLRequest`` (see ``request.py``). With one, each forward
also returns, next to verl's ``log_probs`` and with the same layout (nested ``[B, prompt + response]``, row t scored
against token t + 1):

- ``digit_log_probs`` ``[B, j, 10]`` float32: log-softmax over the 10 digit logits after verl's temperature scaling
  (per sample), for the reward (``no_padding_2_padding`` / ``response_from_nested`` cut the response part);
- ``ntl`` ``[B, j]`` float32, when the batch carries ``ntl_targets``: the per-token NTL of the request's method
  against the target digit of the next token (0 on rows without a target, so prompt rows never count), for the loss.

There is no second forward pass: the 10 digit columns are read from the model's output logits, in both of verl's
layouts (remove-padding packed rows and padded ``[B, L, V]``). During training the actor loss is wrapped by
``loss.NTLActorLoss`` so ``ntl_coef * NTL`` is added to verl's ``ppo_loss``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from .digits import digit_statistics, sequence_targets
from .engine_checks import check_engine_supports_ntl
from .loss import NTLActorLoss
from .request import NTL_TARGETS_KEY, NTLRequest

class NTLFSDPEngine(FSDPEngineWithLMHead):
    """``FSDPEngineWithLMHead`` whose outputs also carry ``digit_log_probs`` and ``ntl`` for NTL batches."""

    def forward_step(self, micro_batch: TensorDict, loss_function, forward_only):
        request = NTLRequest.of(micro_batch)
        if request is not None and loss_function is not None and NTL_TARGETS_KEY in micro_batch.keys():
            loss_function = NTLActorLoss(loss_function, request)
        return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)

    def prepare_model_outputs(self, output, output_args, micro_batch: TensorDict, logits_processor_func):
        model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        request = NTLRequest.of(micro_batch)
        if request is None:
            return model_output
        check_engine_supports_ntl(
            use_fused_kernels=tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False),
            ulysses_sequence_parallel_size=self.ulysses_sequence_parallel_size,
        )
        model_output.update(self._digit_outputs(output, output_args, micro_batch, request))
        return model_output

    def _digit_outputs(self, output, output_args, micro_batch: TensorDict, request: NTLRequest) -> dict:
        input_ids = micro_batch["input_ids"]
        cu_seqlens = input_ids.offsets()
        seq_lengths = cu_seqlens.diff()
        num_rows = int(cu_seqlens[-1])
        digit_ids = torch.tensor(request.digit_ids, dtype=torch.long, device=input_ids.device)
        logits = output.logits
        if hasattr(logits, "full_tensor"):  # a DTensor sharded on the vocabulary
            logits = logits.full_tensor()

        if tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
            # packed rows, possibly followed by verl's static padding rows
            rows = logits.squeeze(0)[:num_rows]
            temperature = output_args["temperature_rmpad"][:num_rows]
            columns = digit_ids
        else:
            # padded [B, L, V]: take the digit columns first, then the valid rows in packed order
            width = logits.shape[1]
            valid = torch.arange(width, device=logits.device).unsqueeze(0) < seq_lengths.unsqueeze(1)
            rows = logits.index_select(-1, digit_ids)[valid]
            temperature = output_args["temperature"].repeat_interleave(seq_lengths)
            columns = torch.arange(len(request.digit_ids), device=logits.device)

        targets = None
        if NTL_TARGETS_KEY in micro_batch.keys():
            response_targets = micro_batch[NTL_TARGETS_KEY]
            if not response_targets.is_nested:
                raise ValueError(f"{NTL_TARGETS_KEY} must be a nested [B, j_response] tensor aligned with responses")
            prompt_lengths = seq_lengths - response_targets.offsets().diff().to(seq_lengths.device)
            targets = sequence_targets(response_targets, prompt_lengths)
        stats = digit_statistics(
            rows, columns, temperature=temperature, ntl_targets=targets, method=request.loss_method
        )
        outputs = {"digit_log_probs": torch.nested.nested_tensor_from_jagged(stats.digit_log_probs, cu_seqlens)}
        if stats.ntl is not None:
            outputs["ntl"] = torch.nested.nested_tensor_from_jagged(stats.ntl, cu_seqlens)
        return outputs
