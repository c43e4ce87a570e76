"""verl's DataProto PPO trainer (``RayPPOTrainer``) with the NTL reward recomputed after old_log_prob.

``RayPPOTrainer`` is the trainer of ``main_ppo`` in verl 0.7.x and 0.8.x and of ``trainer.use_v1=false`` in 0.9.x
(``main_ppo_v0``); its ``fit`` is nearly the same in all three. The rollout's score ``rm_scores`` (verl's reward loop,
before the actor has seen the rollout) is read by ``extract_reward(batch)`` - the tensor ``batch.batch["rm_scores"]``
itself - *before* ``_compute_old_log_prob``, and assigned as ``token_level_scores`` after it. NTL's reward needs the
actor's own number-token log-probs, which only that pass produces. So ``NTLRayPPOTrainer``, per step:

1. ``_compute_old_log_prob``: sends the ``NTLRequest`` with the actor's ``compute_log_prob`` call and keeps the
   ``digit_log_probs`` it returns; runs ``reward_step.ntl_reward_step`` on the padded batch and writes the NTL
   scores over ``rm_scores`` **in place** (the tensor ``fit`` already holds as its reward); adds ``ntl_targets``
   (and ``ntl_weights``) ``[B, R]`` to the returned DataProto, which ``fit`` unions into the batch;
2. ``_update_actor``: sends the request (and the targets, in the form the worker takes) with ``update_actor``, so
   the actor loss gets ``loss_coef * NTL``; the step's ``reward/ntl_*`` metrics ride on the update's
   ``meta_info["metrics"]``, the one dict of the stage ``fit`` logs (its own ``metrics`` is local to ``fit``);
3. ``_compute_ref_log_prob``: ``ntl.response_rows_only`` only (no request, no targets).

The request travels by wrapping the worker group's method for the duration of one stage (``worker_call``), so
verl's own stage code runs unchanged in every release. Two kinds of workers take it:

- engine workers (``verl.workers.engine_workers``; input a no-padding TensorDict): request and
  ``ntl.response_rows_only`` as non-tensor data; ``ntl_targets`` / ``ntl_weights`` nested ``[B, j_response]`` (what
  ``NTLFSDPEngine`` reads; verl's ``left_right_2_no_padding`` leaves extra ``[B, R]`` keys padded in 0.7.1, 0.8.0 and
  0.9.1); their ``compute_log_prob`` returns the engine's whole ``model_output``, ``digit_log_probs`` (nested
  ``[B, m, K]``) included (``TrainingWorker._postprocess_output``, same in the three releases);
- legacy workers (verl 0.7.x, ``trainer.use_legacy_worker_impl`` not ``disable``; input a padded DataProto): the
  request in ``meta_info[NTL_REQUEST_KEY]``, targets padded ``[B, R]`` in ``batch``; ``compute_log_prob`` returns
  ``non_tensor_batch["digit_log_probs"]``, an object array of B float32 tensors ``[m_b, K]`` (the response's
  number-token rows, as the engine's).

``install_ray_trainer()`` makes verl's TaskRunner build this class (where it looks the class up, per release line:
``releases.<line>.trainer_class_slots``).
"""

from __future__ import annotations

import contextlib
import importlib

import torch
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.utils import tensordict_utils as tu

from .releases import verl_line
from .request import DIGIT_LOG_PROBS_KEY, NTL_REQUEST_KEY, NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, RESPONSE_ROWS_KEY
from .run_steps import NTLRunSteps
from .startup import ntl_requests


def response_lengths_of(data: TensorDict) -> torch.Tensor:
    """``[B]`` response length of each sample of verl's no-padding TensorDict (after ``left_right_2_no_padding``,
    which keeps the padded ``attention_mask`` and ``response_mask [B, R]``): the response part of the attention."""
    width = data["response_mask"].shape[-1]
    return data["attention_mask"][:, -width:].sum(-1)


def nested_responses(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Padded response-aligned ``values [B, R]`` -> nested ``[B, j_response]``: row b cut to ``lengths[b]``."""
    if values.is_nested:
        return values
    return torch.nested.as_nested_tensor([row[:n] for row, n in zip(values, lengths.tolist(), strict=True)],
                                         layout=torch.jagged)


@contextlib.contextmanager
def worker_call(worker_group, method: str, rewrite_input, read_output=None):
    """For the duration of the block, ``worker_group.<method>(data, ...)`` sends ``rewrite_input(data)`` and returns
    ``read_output(output)`` (default: ``output``). Restores the worker group's method afterwards, also on error;
    a worker group without ``method`` is left alone."""
    if worker_group is None or not hasattr(worker_group, method):
        yield
        return
    original = getattr(worker_group, method)
    own_attribute = method in vars(worker_group)

    def call(data, *args, **kwargs):
        output = original(rewrite_input(data), *args, **kwargs)
        return output if read_output is None else read_output(output)

    setattr(worker_group, method, call)
    try:
        yield
    finally:
        if own_attribute:
            setattr(worker_group, method, original)
        else:
            delattr(worker_group, method)


class NTLRayPPOTrainer(NTLRunSteps, RayPPOTrainer):
    """``RayPPOTrainer`` whose rewards are NTL rewards computed from the actor's own number-token distributions, and
    whose actor loss has the NTL term (see the module docstring)."""

    def __init__(self, config, *args, **kwargs):
        # the plug-in installs this class in place of verl's for every run of the process: one that does not ask
        # for NTL (``startup.ntl_requests``) runs verl's trainer unchanged
        self.ntl_enabled = bool(ntl_requests(config))
        if self.ntl_enabled:
            self.configure_ntl(config)
        super().__init__(config, *args, **kwargs)
        if self.ntl_enabled:
            self.ntl_request = self.make_ntl_request(self.tokenizer)
        self.ntl_step_metrics: dict[str, float] = {}

    # --- what each worker call carries -------------------------------------------------------------------------

    def _actor_input(self, data, *, request: bool, targets: bool):
        """The input of an actor/reference call with the NTL settings; the trainer's own batch is not modified."""
        if isinstance(data, DataProto):  # legacy workers: padded DataProto, settings in meta_info
            if not request:
                return data
            return DataProto(batch=data.batch, non_tensor_batch=data.non_tensor_batch,
                             meta_info={**data.meta_info, NTL_REQUEST_KEY: self.ntl_request.as_dict()})
        data = data.copy()  # engine workers: no-padding TensorDict (shallow copy)
        settings = {RESPONSE_ROWS_KEY: self.ntl.response_rows_only}
        if request:
            settings[NTL_REQUEST_KEY] = self.ntl_request.as_dict()
        tu.assign_non_tensor(data, **settings)
        for key in [key for key in (NTL_TARGETS_KEY, NTL_WEIGHTS_KEY) if key in data.keys()]:
            if targets:  # NTLFSDPEngine reads them nested, aligned with the responses
                data[key] = nested_responses(data[key], response_lengths_of(data))
            else:
                del data[key]
        return data

    @staticmethod
    def _take_digit_log_probs(output, captured: list):
        """Move the worker's ``digit_log_probs`` out of its output into ``captured`` (verl's stage reads only its
        own keys; the rows must not reach the batch)."""
        fields = output.non_tensor_batch if isinstance(output, DataProto) else output
        rows = fields.pop(DIGIT_LOG_PROBS_KEY, None)
        if rows is None:
            raise RuntimeError(
                "the actor's compute_log_prob returned no digit_log_probs for an NTL request: the actor workers "
                "must build the NTL engine (actor_rollout_ref.model.external_lib=verl_integration.plugin)"
            )
        captured.append(rows)
        return output

    # --- verl's stages ----------------------------------------------------------------------------------------

    def _compute_old_log_prob(self, batch: DataProto):
        if not self.ntl_enabled:
            return super()._compute_old_log_prob(batch)
        captured = []
        with worker_call(self.actor_rollout_wg, "compute_log_prob",
                         lambda data: self._actor_input(data, request=True, targets=False),
                         lambda output: self._take_digit_log_probs(output, captured)):
            # verl 0.7.1, 0.8.0, 0.9.1 all return (old_log_prob DataProto, mfu)
            old_log_prob, mfu = super()._compute_old_log_prob(batch)
        (digit_log_probs,) = captured
        written = self._apply_ntl_reward(batch, digit_log_probs)
        for key, value in written.items():
            old_log_prob.batch[key] = value
        return old_log_prob, mfu

    def _compute_ref_log_prob(self, batch: DataProto) -> DataProto:
        if not self.ntl_enabled:
            return super()._compute_ref_log_prob(batch)

        def rewrite(data):
            return self._actor_input(data, request=False, targets=False)

        with contextlib.ExitStack() as calls:  # the reference runs in the actor's workers or in its own
            for worker_group in {id(wg): wg for wg in (self.actor_rollout_wg, getattr(self, "ref_policy_wg", None))
                                 if wg is not None}.values():
                for method in ("compute_log_prob", "compute_ref_log_prob"):
                    calls.enter_context(worker_call(worker_group, method, rewrite))
            return super()._compute_ref_log_prob(batch)

    def _update_actor(self, batch: DataProto) -> DataProto:
        if not self.ntl_enabled:
            return super()._update_actor(batch)
        with worker_call(self.actor_rollout_wg, "update_actor",
                         lambda data: self._actor_input(data, request=True, targets=True)):
            output = super()._update_actor(batch)
        # the reward step's metrics, logged once with this step's actor metrics (reduce_metrics takes scalars)
        output.meta_info.setdefault("metrics", {}).update(self.ntl_step_metrics)
        self.ntl_step_metrics = {}
        return output

    def _apply_ntl_reward(self, batch: DataProto, digit_log_probs) -> dict[str, torch.Tensor]:
        """Recompute each sample's score from the actor's number-token rows, write it over ``rm_scores`` in place
        (the tensor ``fit`` holds as the step's reward since ``extract_reward``) and return the loss targets
        (``ntl_targets [B, R]`` int64, ``ntl_weights [B, R]`` float32 with place weighting) for the batch."""
        responses = batch.batch["responses"]
        width = responses.shape[1]
        rm_scores = batch.batch["rm_scores"]
        if rm_scores.shape != responses.shape:
            raise ValueError(f"rm_scores must be [B, R] like responses {tuple(responses.shape)}, "
                             f"got {tuple(rm_scores.shape)}")
        non_tensor = batch.non_tensor_batch
        result = self.ntl_reward(
            responses=responses,
            response_mask=batch.batch["response_mask"],
            attention_mask=batch.batch["attention_mask"][:, -width:],
            digit_log_probs=digit_log_probs,
            reward_models=non_tensor.get("reward_model"),
            data_sources=non_tensor.get("data_source"),
            extra_infos=non_tensor.get("extra_info"),
        )
        rm_scores.copy_(result.rm_scores.to(rm_scores))
        self.ntl_step_metrics = dict(result.metrics)
        written = {NTL_TARGETS_KEY: result.ntl_targets}
        if result.ntl_weights is not None:
            written[NTL_WEIGHTS_KEY] = result.ntl_weights
        return written


def install_ray_trainer() -> list[str]:
    """Make verl's TaskRunner build ``NTLRayPPOTrainer`` (idempotent); returns the ``module.attribute`` names set.

    Must run in every process that builds or pickles the TaskRunner before it does (the plug-in, imported at
    ``import verl``): in 0.7.x / 0.8.x before ``main_ppo``'s body runs.
    """
    installed = []
    for module_name, attribute in verl_line().trainer_class_slots():
        module = importlib.import_module(module_name)
        if getattr(module, attribute) is not NTLRayPPOTrainer:
            setattr(module, attribute, NTLRayPPOTrainer)
        installed.append(f"{module_name}.{attribute}")
    return installed


def ray_trainer_installed() -> bool:
    """Whether every place verl's task runner reads its trainer class from holds ``NTLRayPPOTrainer``."""
    return all(getattr(importlib.import_module(module), attribute) is NTLRayPPOTrainer
               for module, attribute in verl_line().trainer_class_slots())
