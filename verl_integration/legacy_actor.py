"""NTL on verl's legacy FSDP workers (verl 0.7.x: ``fsdp_workers`` + ``DataParallelPPOActor``; 0.7.1 tested).

``NTLDataParallelPPOActor`` is verl's ``DataParallelPPOActor`` for every batch without an ``NTLRequest`` (each
method calls ``super()`` untouched). A batch with one (``data.meta_info[NTL_REQUEST_KEY]`` = ``NTLRequest.as_dict()``)
also gets, from the same forward:

- ``compute_log_prob``: verl's outputs plus the number rows of each sample: ``digit_log_probs``, B CPU float32
  tensors ``[m_b, K]``, the log-softmax over the request's K number-token logits (after verl's temperature) at the
  rows that predict the number tokens of the response, in response order (response token j is scored by the logits
  of position ``prompt_len + j - 1``; j counts only while ``attention_mask`` is 1). Same rows as
  ``engine.number_rows``;
- ``update_policy`` with ``data.batch["ntl_targets"]`` (``[B, R]`` int64 slot or -100, response-aligned; optional
  ``ntl_weights`` ``[B, R]`` float32): verl's loss plus ``loss_coef * ntl_term`` per micro-batch, where
  ``ntl_term = agg_loss(ntl[b, R] * (target != -100), response_mask, actor.loss_agg_mode)``, aggregated over the
  response tokens as verl 0.7.1's policy losses aggregate ``pg_loss`` (token-mean: the NTL of the targets summed and
  divided by the micro-batch's response tokens, like the 0.9 engine's term), scaled by verl's per-micro-batch
  ``loss_scale_factor`` (``1 / gradient_accumulation``, or the micro-batch's share of the mini-batch with dynamic
  batch sizes). Metrics, added to verl's: ``actor/ntl_loss`` (summed over micro-batches with the same factor, as ``actor/pg_loss``),
  ``actor/ntl_digit_acc`` (per micro-batch with targets: fraction of targets whose most likely number token is the
  target; the trainer averages the list), ``actor/entropy_loss`` (the entropy term, aggregated like
  ``actor/pg_loss``) and ``actor/loss``: the sum of the micro-batch losses verl backpropagated, which verl 0.7.1's
  actor does not log, so that ``actor/loss = actor/pg_loss + kl_loss_coef * actor/kl_loss - entropy_coeff *
  actor/entropy_loss + loss_coef * actor/ntl_loss`` as with the 0.9 engine.

**Where the outputs come from.** verl's ``_forward_micro_batch`` runs the model and scores its logits in one body
(temperature division in place, ``logprobs_from_logits``, entropy), so it cannot be reused for one read of the
logits. For the single pass (``fused_actor`` true, or "auto" where ``ntl_kernels.checks.use_triton(logits)``) the
method is therefore overridden by our own forward (``_single_pass``), written from reading verl 0.7.1: the same model
call in verl's two layouts (remove-padding: the ``attention_mask``'s tokens packed into one ``[1, n]`` row, sliced
for Ulysses; padded: ``[B, L]``), then one ``fused_logprob_entropy_ntl`` call over the logits for log-probs,
entropy, number-token log-probs and NTL; its backward writes the logits' gradient into their own buffer, safe for the
reason given in ``engine.NTLFSDPEngine._single_pass_outputs`` (the logits are the LM head's output, nothing else
reads them afterwards). Otherwise (``fused_actor`` false, or "auto" where the batch asks for verl's
``calculate_sum_pi_squared``) verl's own ``_forward_micro_batch`` runs and a forward hook on the model keeps the K
number-token columns of its logits (``index_select``, before verl divides the logits in place), which
``digits.digit_statistics`` scores.

Ulysses sequence parallelism (remove-padding only, as in verl): every per-row input (labels, targets, weights) is
padded and sliced with verl's own ``ulysses_pad_and_slice_inputs``, as verl slices its rolled input ids, and every
per-row output is gathered with ``gather_outputs_and_unpad``, as verl gathers its log-probs; the per-row math needs
no other rank. Not run on CPU (it needs a multi-rank process group). Refused with an NTL request: multi-modal inputs,
verl's fused LM head (``use_fused_kernels``: no logits) and the prefix grouper (its own forward).

``NTLActorRolloutRefWorker`` / ``NTLAsyncActorRolloutRefWorker`` (verl 0.7.1's ``main_ppo`` instantiates
``verl.workers.fsdp_workers.AsyncActorRolloutRefWorker`` for the actor-rollout role and, as the same class, for the
reference policy) build verl's actor and replace it by ``NTLDataParallelPPOActor`` on the same module, optimizer and
config; their ``compute_log_prob`` returns, for a request, ``non_tensor_batch["digit_log_probs"]``: a numpy object
array of B CPU float32 tensors ``[m_b, K]``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
from verl import DataProto
from verl.single_controller.base.decorator import MAGIC_ATTR
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils.attention_utils import pad_input, unpad_input
from verl.utils.ulysses import gather_outputs_and_unpad, ulysses_pad_and_slice_inputs
from verl.workers import fsdp_workers
from verl.workers.actor.dp_actor import DataParallelPPOActor

from ntl_kernels import fused_logprob_entropy_ntl
from ntl_kernels.checks import use_triton

from .digits import IGNORE_INDEX, digit_statistics
from .releases.v07 import MICRO_BATCH_OUTPUTS_ARE_DICTS
from .request import DIGIT_LOG_PROBS_KEY, NTL_REQUEST_KEY, NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, NTLRequest

SAMPLE_KEY = "ntl_sample_index"  # batch field carried through verl's micro-batching (dynamic batches reorder)

def _forward_outputs_as_dict(verl_outputs) -> dict:
    """verl's ``_forward_micro_batch`` return value as 0.7.1's dict."""
    if MICRO_BATCH_OUTPUTS_ARE_DICTS:
        return dict(verl_outputs)
    entropy, log_probs = verl_outputs
    return {"log_probs": log_probs} if entropy is None else {"log_probs": log_probs, "entropys": entropy}


def _forward_outputs_as_verl(outputs: dict):
    """The inverse of ``_forward_outputs_as_dict``: what this release's ``_forward_micro_batch`` returns."""
    return outputs if MICRO_BATCH_OUTPUTS_ARE_DICTS else (outputs.get("entropys"), outputs["log_probs"])


def request_of(data: DataProto) -> NTLRequest | None:
    """The ``NTLRequest`` in ``data.meta_info`` (None: a plain verl batch)."""
    return NTLRequest.from_raw(data.meta_info.get(NTL_REQUEST_KEY))


class _KeepNTLFields(DataProto):
    """A DataProto whose ``select`` keeps the NTL fields too: verl's ``compute_log_prob`` / ``update_policy`` select
    the keys they know before splitting into micro-batches, and everything after the select carries every key."""

    def select(self, batch_keys=None, non_tensor_batch_keys=None, meta_info_keys=None, deepcopy=False):
        if batch_keys is not None:
            extra = [key for key in (NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, SAMPLE_KEY) if key in self.batch.keys()]
            batch_keys = [*batch_keys, *extra]
        return super().select(batch_keys, non_tensor_batch_keys, meta_info_keys, deepcopy)

    @classmethod
    def of(cls, data: DataProto) -> _KeepNTLFields:
        return cls(batch=data.batch, non_tensor_batch=data.non_tensor_batch, meta_info=data.meta_info)


class _AddToLoss(torch.autograd.Function):
    """Identity on ``carrier`` whose backward also gives ``term`` the gradient ``weight``: ``loss.backward()`` of any
    loss that reads ``carrier`` then differentiates ``loss + weight * term`` (``weight`` includes every factor verl
    applies to its loss before the backward: the micro-batch scale, the fp16 grad scaler's scale)."""

    @staticmethod
    def forward(ctx, carrier, term, weight: float):
        ctx.weight = weight
        return carrier.clone()

    @staticmethod
    def backward(ctx, grad_carrier):
        return grad_carrier, grad_carrier.new_full((), ctx.weight), None


@dataclasses.dataclass
class _Pass:
    """What an NTL ``compute_log_prob`` / ``update_policy`` call asked for and collected, micro-batch by
    micro-batch."""

    request: NTLRequest
    number_ids: torch.Tensor  # LongTensor[K]
    number_values: torch.Tensor  # FloatTensor[K]
    training: bool
    digit_rows: dict = dataclasses.field(default_factory=dict)  # sample index -> [m, K] float32 CPU
    ntl_loss: float = 0.0
    entropy_loss: float = 0.0
    digit_accuracy: list = dataclasses.field(default_factory=list)


class _Layout:
    """verl's padded ``[B, L]`` positions <-> the rows the model computes, flattened to ``[n, ...]``.

    remove-padding: the positions where ``attention_mask`` is 1, packed (``unpad_input``'s order: sample by sample),
    right-padded and cut into this rank's slice with Ulysses; padded: all ``B * L`` positions.
    """

    def __init__(self, actor: DataParallelPPOActor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.shape = input_ids.shape
        self.remove_padding = actor.use_remove_padding
        self.sp_size = actor.ulysses_sequence_parallel_size if self.remove_padding else 1
        module = getattr(actor.actor_module, "module", actor.actor_module)
        if self.sp_size > 1 and hasattr(module.config, "vision_config"):
            # verl slices a vision-language model's sequence after the embedding, not its input ids
            raise NotImplementedError("NTL on verl's legacy actor: Ulysses sequence parallelism with a "
                                      "vision-language model is not supported")
        self.pad_size = 0
        if self.remove_padding:
            _, self.indices, *_ = unpad_input(input_ids.unsqueeze(-1), attention_mask)

    def packed(self, per_position: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> ``[n, ...]`` in verl's packed order (before Ulysses slicing)."""
        flat = per_position.reshape(-1, *per_position.shape[2:])
        return flat.index_select(0, self.indices) if self.remove_padding else flat

    def to_model(self, packed: torch.Tensor, fill) -> torch.Tensor:
        """``[n]`` packed per-row values -> this rank's model rows (``fill`` on Ulysses padding)."""
        if self.sp_size == 1:
            return packed
        rows, _, self.pad_size = ulysses_pad_and_slice_inputs(packed.unsqueeze(0), sp_size=self.sp_size,
                                                              pad_value=fill)
        return rows.squeeze(0)

    def gathered(self, model_rows: torch.Tensor) -> torch.Tensor:
        """This rank's ``[n', ...]`` model-row outputs -> ``[n, ...]`` packed (verl's all-gather and unpad)."""
        if self.sp_size == 1:
            return model_rows
        return gather_outputs_and_unpad(model_rows, gather_dim=0, unpad_dim=0, padding_size=self.pad_size)

    def response(self, model_rows: torch.Tensor, response_length: int) -> torch.Tensor:
        """``[n']`` per-row outputs -> ``[B, R]`` at the rows that score the response (0 at padding), as verl cuts
        its log-probs: positions ``L - R - 1 .. L - 2``."""
        rows = self.gathered(model_rows)
        batch_size, width = self.shape
        if self.remove_padding:
            positions = pad_input(rows.unsqueeze(-1), self.indices, batch_size, width).squeeze(-1)
        else:
            positions = rows.view(batch_size, width)
        return positions[:, -response_length - 1: -1]


def _response_field(micro_batch: dict, key: str, fill, dtype) -> torch.Tensor | None:
    """A response-aligned ``[B, R]`` field as ``[B, L]`` per position: response token j's value at the position that
    scores it, ``L - R - 1 + j``; ``fill`` elsewhere. None when the micro-batch has no such field."""
    if key not in micro_batch:
        return None
    values = micro_batch[key]
    input_ids, responses = micro_batch["input_ids"], micro_batch["responses"]
    if values.shape != responses.shape:
        raise ValueError(f"{key} must be [B, R] = {tuple(responses.shape)} like responses, got {tuple(values.shape)}")
    per_position = torch.full(input_ids.shape, fill, dtype=dtype, device=input_ids.device)
    width = responses.shape[1]
    per_position[:, -width - 1: -1] = values.to(device=input_ids.device, dtype=dtype)
    return per_position


class NTLDataParallelPPOActor(DataParallelPPOActor):
    """verl's legacy actor (``DataParallelPPOActor``) with the NTL outputs and loss term for batches that carry an
    ``NTLRequest`` (see the module docstring); every other batch is verl's."""

    _ntl: _Pass | None = None  # the running NTL compute_log_prob / update_policy
    last_digit_log_probs: np.ndarray | None = None  # the number rows of the last NTL compute_log_prob

    def compute_log_prob(self, data: DataProto, calculate_entropy: bool = False):
        """verl's ``compute_log_prob``; with an NTL request its outputs also carry ``digit_log_probs`` (0.7.1's dict;
        the tuple of earlier releases has no room for it) and ``last_digit_log_probs`` keeps them: a numpy object
        array of B CPU float32 tensors ``[m_b, K]``, the sample's number rows in response order."""
        request = request_of(data)
        if request is None:
            return super().compute_log_prob(data, calculate_entropy=calculate_entropy)
        data = _KeepNTLFields(batch=data.batch.copy(), non_tensor_batch=data.non_tensor_batch,
                              meta_info=data.meta_info)  # a new TensorDict of the same tensors, for SAMPLE_KEY
        data.batch[SAMPLE_KEY] = torch.arange(len(data))
        ntl_pass = self._new_pass(request, training=False)
        with self._running(ntl_pass):
            outputs = super().compute_log_prob(data, calculate_entropy=calculate_entropy)
        rows = np.empty(len(data), dtype=object)
        rows[:] = [ntl_pass.digit_rows[index] for index in range(len(data))]
        self.last_digit_log_probs = rows
        if not MICRO_BATCH_OUTPUTS_ARE_DICTS:
            return outputs
        return {**outputs, DIGIT_LOG_PROBS_KEY: rows}

    def update_policy(self, data: DataProto):
        """verl's ``update_policy``; with an NTL request and ``ntl_targets`` the loss also holds ``loss_coef`` times
        the NTL term, and the metrics the NTL ones (module docstring)."""
        request = request_of(data)
        if request is None or NTL_TARGETS_KEY not in data.batch.keys():
            return super().update_policy(data)
        ntl_pass = self._new_pass(request, training=True)
        with self._running(ntl_pass):
            metrics = super().update_policy(_KeepNTLFields.of(data))
        metrics["actor/ntl_loss"] = ntl_pass.ntl_loss
        metrics["actor/entropy_loss"] = ntl_pass.entropy_loss
        if ntl_pass.digit_accuracy:
            metrics["actor/ntl_digit_acc"] = ntl_pass.digit_accuracy
        loss = metrics["actor/pg_loss"] - self.config.entropy_coeff * ntl_pass.entropy_loss
        if self.config.use_kl_loss:
            loss += self.config.kl_loss_coef * metrics["actor/kl_loss"]
        metrics["actor/loss"] = loss + request.loss_coef * ntl_pass.ntl_loss
        return metrics

    def _new_pass(self, request: NTLRequest, training: bool) -> _Pass:
        if self.use_fused_kernels or self.use_prefix_grouper:
            option = "use_fused_kernels" if self.use_fused_kernels else "use_prefix_grouper"
            raise NotImplementedError(
                f"NTL on verl's legacy actor needs the model's logits; {option}=true is not supported with an NTL "
                f"request (set actor_rollout_ref.model.use_fused_kernels=false / actor.use_prefix_grouper=false)"
            )
        return _Pass(request, torch.tensor(request.digit_ids, dtype=torch.long),
                     torch.tensor(request.number_values, dtype=torch.float32), training)

    @contextlib.contextmanager
    def _running(self, ntl_pass: _Pass):
        self._ntl = ntl_pass
        try:
            yield
        finally:
            self._ntl = None

    def _forward_micro_batch(self, micro_batch, temperature, calculate_entropy=False):
        ntl_pass = self._ntl
        if ntl_pass is None:
            return super()._forward_micro_batch(micro_batch, temperature=temperature,
                                                calculate_entropy=calculate_entropy)
        # verl 0.7.1's agent loop gives every sample a multi_modal_inputs entry, empty for text
        if any(micro_batch.get("multi_modal_inputs", ())) or micro_batch["position_ids"].dim() == 3:
            raise NotImplementedError("NTL on verl's legacy actor supports text-only batches (no multi_modal_inputs)")
        if not bool(micro_batch["attention_mask"].any()):
            raise ValueError("an NTL micro-batch needs at least one token with attention_mask 1")
        layout = _Layout(self, micro_batch["input_ids"], micro_batch["attention_mask"])
        passes = self._fused_outputs if self._use_single_pass(ntl_pass.request) else self._verl_outputs
        outputs, digit_log_probs, ntl = passes(micro_batch, temperature, calculate_entropy, ntl_pass, layout)
        number_positions = self._number_positions(micro_batch, ntl_pass.number_ids)  # [B, L]
        number_rows = layout.gathered(digit_log_probs)[layout.packed(number_positions)]  # [m, K], sample by sample
        if ntl_pass.training:
            ntl = layout.response(ntl, micro_batch["responses"].shape[1])
            outputs["log_probs"] = self._add_ntl_term(micro_batch, outputs, ntl, number_rows, number_positions,
                                                      ntl_pass)
        else:
            per_sample = number_rows.float().cpu().split(number_positions.sum(1).tolist())
            ntl_pass.digit_rows.update(zip(micro_batch[SAMPLE_KEY].tolist(), per_sample, strict=True))
        return _forward_outputs_as_verl(outputs)

    def _use_single_pass(self, request: NTLRequest) -> bool:
        """Whether the micro-batches' outputs come from one ``fused_logprob_entropy_ntl`` call (module docstring)."""
        if request.fused_actor is False:
            return False
        if self.config.get("calculate_sum_pi_squared", False):
            if request.fused_actor is True:
                raise ValueError("ntl.fused_actor=true, but actor.calculate_sum_pi_squared asks for verl's own "
                                 "passes over the logits; set ntl.fused_actor=auto (or false)")
            return False
        # "auto": the Triton kernels run on the model's device (CUDA, or the CPU under TRITON_INTERPRET=1);
        # elsewhere the op's plain-torch reference reads and allocates no less than verl's passes
        return request.fused_actor is True or use_triton(torch.empty(0, device=self.device_name))

    def _model_logits(self, micro_batch: dict, layout: _Layout) -> torch.Tensor:
        """The model's ``[n', V]`` logits of this rank's rows: verl's model call, in verl's layout."""
        input_ids, attention_mask = micro_batch["input_ids"], micro_batch["attention_mask"]
        position_ids = micro_batch["position_ids"]
        with torch.autocast(device_type=self.device_name, dtype=self.param_dtype):
            if layout.remove_padding:
                ids, positions = layout.packed(input_ids).unsqueeze(0), layout.packed(position_ids).unsqueeze(0)
                if layout.sp_size > 1:
                    ids, positions, layout.pad_size = ulysses_pad_and_slice_inputs(ids, positions,
                                                                                   sp_size=layout.sp_size)
                output = self.actor_module(input_ids=ids, attention_mask=None, position_ids=positions,
                                           use_cache=False)
            else:
                output = self.actor_module(input_ids=input_ids, attention_mask=attention_mask,
                                           position_ids=position_ids, use_cache=False)
        return output.logits.reshape(-1, output.logits.shape[-1])

    @staticmethod
    def _row_inputs(micro_batch: dict, layout: _Layout, training: bool) -> tuple:
        """Per model row: the label (the next token, rolled as verl rolls its input ids), and when training the NTL
        target and weight (None without)."""
        input_ids = micro_batch["input_ids"]
        if layout.remove_padding:  # verl rolls the packed stream
            labels = layout.packed(input_ids).roll(-1)
        else:
            labels = layout.packed(input_ids.roll(-1, dims=1))
        labels = layout.to_model(labels, IGNORE_INDEX)
        if not training:
            return labels, None, None
        targets = _response_field(micro_batch, NTL_TARGETS_KEY, IGNORE_INDEX, torch.long)
        weights = _response_field(micro_batch, NTL_WEIGHTS_KEY, 1.0, torch.float32)
        return (labels, layout.to_model(layout.packed(targets), IGNORE_INDEX),
                None if weights is None else layout.to_model(layout.packed(weights), 1.0))

    def _fused_outputs(self, micro_batch, temperature, calculate_entropy, ntl_pass: _Pass, layout: _Layout):
        """verl's log-probs (and entropy), the number-token log-probs ``[n', K]`` and the NTL ``[n']`` from one read
        of the logits."""
        logits = self._model_logits(micro_batch, layout)
        labels, targets, weights = self._row_inputs(micro_batch, layout, ntl_pass.training)
        result = fused_logprob_entropy_ntl(
            logits, labels, ntl_pass.number_ids.to(logits.device), temperature=temperature, ntl_targets=targets,
            weights=weights, number_values=ntl_pass.number_values.to(logits.device),
            method=ntl_pass.request.loss_method, ignore_index=IGNORE_INDEX, inplace_backward=True,
        )
        response_length = micro_batch["responses"].shape[1]
        outputs = {"log_probs": layout.response(result.log_probs, response_length)}
        if calculate_entropy:
            outputs["entropys"] = layout.response(result.entropy, response_length)
        return outputs, result.digit_log_probs.detach(), result.ntl

    def _verl_outputs(self, micro_batch, temperature, calculate_entropy, ntl_pass: _Pass, layout: _Layout):
        """verl's own ``_forward_micro_batch``, plus the number-token log-probs and NTL from the K number-token
        columns of its logits (kept by a forward hook before verl divides the logits in place)."""
        number_ids = ntl_pass.number_ids
        kept = []

        def keep_number_columns(module, args, output):
            logits = output.logits
            kept.append(logits.reshape(-1, logits.shape[-1]).index_select(-1, number_ids.to(logits.device)))

        handle = self.actor_module.register_forward_hook(keep_number_columns)
        try:
            outputs = _forward_outputs_as_dict(super()._forward_micro_batch(
                micro_batch, temperature=temperature, calculate_entropy=calculate_entropy))
        finally:
            handle.remove()
        (number_logits,) = kept
        _, targets, weights = self._row_inputs(micro_batch, layout, ntl_pass.training)
        stats = digit_statistics(
            number_logits, torch.arange(len(number_ids), device=number_logits.device),
            number_values=ntl_pass.number_values.to(number_logits.device),
            temperature=torch.full(number_logits.shape[:1], float(temperature), device=number_logits.device),
            ntl_targets=targets, weights=weights, method=ntl_pass.request.loss_method,
        )
        return outputs, stats.digit_log_probs, stats.ntl

    @staticmethod
    def _number_positions(micro_batch: dict, number_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool: the positions that score a response token (attended) that is a number token."""
        responses, attention_mask = micro_batch["responses"], micro_batch["attention_mask"]
        width = responses.shape[1]
        is_number = torch.isin(responses, number_ids.to(responses.device)) & attention_mask[:, -width:].bool()
        positions = torch.zeros_like(attention_mask, dtype=torch.bool)
        positions[:, -width - 1: -1] = is_number
        return positions

    def _add_ntl_term(self, micro_batch, outputs: dict, ntl: torch.Tensor, number_rows: torch.Tensor,
                      number_positions: torch.Tensor, ntl_pass: _Pass) -> torch.Tensor:
        """``outputs["log_probs"]`` carrying ``loss_coef * ntl_term`` into verl's backward, and the NTL metrics of
        this micro-batch (module docstring)."""
        targets = micro_batch[NTL_TARGETS_KEY].to(ntl.device)
        has_target = targets != IGNORE_INDEX
        loss_agg_mode = self.config.loss_agg_mode
        # over the micro-batch's response tokens, as verl 0.7's legacy actor aggregates pg_loss (per micro-batch):
        # with token-mean, NTL summed over the targets / response tokens, the engine's term (whose verl divides by
        # the global batch's response tokens); a micro-batch without targets adds 0
        ntl_term = agg_loss(loss_mat=ntl * has_target, loss_mask=micro_batch["response_mask"].to(ntl.device),
                            loss_agg_mode=loss_agg_mode, **getattr(self.config, "global_batch_info", {}))
        # verl's factor on this micro-batch's loss (update_policy)
        if self.config.use_dynamic_bsz:
            scale = micro_batch["response_mask"].shape[0] / self.config.ppo_mini_batch_size
        else:
            scale = 1 / self.gradient_accumulation
        ntl_pass.ntl_loss += ntl_term.item() * scale
        if "entropys" in outputs:
            entropy = agg_loss(loss_mat=outputs["entropys"], loss_mask=micro_batch["response_mask"],
                               loss_agg_mode=loss_agg_mode)
            ntl_pass.entropy_loss += entropy.item() * scale
        num_targets = int(has_target.sum())
        if num_targets:
            width = targets.shape[1]
            number_targets = targets[number_positions[:, -width - 1: -1]]  # the number rows' targets, in order
            correct = (number_rows.argmax(-1) == number_targets.to(number_rows.device)).sum()
            ntl_pass.digit_accuracy.append(correct.item() / num_targets)
        if ntl_pass.request.loss_coef == 0.0:
            return outputs["log_probs"]
        weight = ntl_pass.request.loss_coef * scale
        if self.scaler is not None:
            weight *= float(self.scaler.get_scale())
        return _AddToLoss.apply(outputs["log_probs"], ntl_term, weight)


def _registered_like(verl_method):
    """Give an override verl's registration of the method it overrides (dispatch mode, execute mode: the attribute
    verl's ``register`` sets, which its worker group reads to expose the method)."""

    def decorate(method):
        setattr(method, MAGIC_ATTR, getattr(verl_method, MAGIC_ATTR))
        return method

    return decorate


class _NTLActorWorker:
    """The NTL part of verl's legacy actor-rollout-ref worker (mixed in before verl's worker class)."""

    @_registered_like(fsdp_workers.ActorRolloutRefWorker.init_model)
    def init_model(self):
        """verl's ``init_model``, then the actor role's ``DataParallelPPOActor`` replaced by
        ``NTLDataParallelPPOActor`` on the same module, optimizer and config (the reference policy stays verl's)."""
        super().init_model()
        if self._is_actor:
            self.actor = NTLDataParallelPPOActor(config=self.actor.config, actor_module=self.actor.actor_module,
                                                 actor_optimizer=self.actor.actor_optimizer)

    @_registered_like(fsdp_workers.ActorRolloutRefWorker.compute_log_prob)
    def compute_log_prob(self, data: DataProto):
        """verl's ``compute_log_prob``; for a batch with an NTL request the returned DataProto also holds
        ``non_tensor_batch["digit_log_probs"]``: a numpy object array of B CPU float32 tensors ``[m_b, K]``, each
        sample's number rows in response order. The reference log-probs of a LoRA actor (``is_lora``, computed here
        with the adapter off) carry none: the request is dropped from that batch."""
        if data.meta_info.get("is_lora", False):
            data.meta_info.pop(NTL_REQUEST_KEY, None)
        if request_of(data) is None:
            return super().compute_log_prob(data)
        output = super().compute_log_prob(data)
        output.non_tensor_batch[DIGIT_LOG_PROBS_KEY] = self.actor.last_digit_log_probs
        self.actor.last_digit_log_probs = None
        return output


class NTLActorRolloutRefWorker(_NTLActorWorker, fsdp_workers.ActorRolloutRefWorker):
    """verl's legacy ``ActorRolloutRefWorker`` with the NTL actor (see ``_NTLActorWorker``)."""


class NTLAsyncActorRolloutRefWorker(_NTLActorWorker, fsdp_workers.AsyncActorRolloutRefWorker):
    """verl's legacy ``AsyncActorRolloutRefWorker`` (the class verl 0.7.1's ``main_ppo`` instantiates for the
    actor-rollout and reference roles) with the NTL actor (see ``_NTLActorWorker``)."""


# where verl 0.7's main_ppo task runner looks its legacy worker classes up (at call time, in its process)
WORKERS = {"ActorRolloutRefWorker": NTLActorRolloutRefWorker,
           "AsyncActorRolloutRefWorker": NTLAsyncActorRolloutRefWorker}


def install_legacy_worker() -> None:
    """Make ``verl.workers.fsdp_workers``' actor-rollout-ref worker classes the NTL ones (idempotent)."""
    for name, worker in WORKERS.items():
        setattr(fsdp_workers, name, worker)


def legacy_worker_installed() -> bool:
    return all(getattr(fsdp_workers, name) is worker for name, worker in WORKERS.items())
