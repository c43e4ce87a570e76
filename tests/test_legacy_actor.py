"""NTLDataParallelPPOActor / NTLActorRolloutRefWorker against verl's legacy actor (verl 0.7.x, real verl on CPU):
verl's outputs and update unchanged, the number rows and the NTL term added, in both layouts and on both paths (one
fused pass, verl's passes + a digit pass). Skipped where verl has no legacy actor (0.8 and later)."""

import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("verl.workers.actor.dp_actor", reason="verl's legacy DataParallelPPOActor (verl <= 0.7.x)")

from omegaconf import OmegaConf  # noqa: E402
from verl.single_controller.base.decorator import MAGIC_ATTR  # noqa: E402
from verl.trainer.ppo.core_algos import agg_loss  # noqa: E402
from verl.workers import fsdp_workers  # noqa: E402
from verl.workers.actor.dp_actor import DataParallelPPOActor  # noqa: E402

from ntl_kernels import digit_targets, ntl_loss_reference  # noqa: E402
from tests.legacy_cpu import (  # noqa: E402
    new_actor,
    padded_batch,
    parameters,
    tiny_model,
    training_batch,
)
from verl_integration.legacy_actor import (  # noqa: E402
    NTLActorRolloutRefWorker,
    NTLAsyncActorRolloutRefWorker,
    NTLDataParallelPPOActor,
)
from verl_integration.request import DIGIT_LOG_PROBS_KEY, NTL_REQUEST_KEY, NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, NTLRequest  # noqa: E402

DIGIT_IDS = tuple(range(15, 25))  # Qwen2.5's '0'..'9'
PAIR_TEXTS = tuple(str(d) for d in range(10)) + tuple(f"{n:02d}" for n in range(100))
PAIR_IDS = DIGIT_IDS + tuple(range(2000, 2100))  # 110 number tokens: the digits and 100 two-digit tokens
TEMPERATURE = 0.8
# 4 samples, micro-batches of 2: digits in prompts (never scored), responses of different lengths, a non-digit (220)
PROMPTS = [[101, 15, 16], [102], [103, 104, 105, 106], [107, 17]]
RESPONSES = [[18, 220, 19, 20, 21], [22, 2023, 23], [24, 15, 2099, 220], [17]]
ADVANTAGES = torch.tensor([[1.0] * 5, [-0.5] * 5, [0.25] * 5, [2.0] * 5])
LAYOUTS = pytest.mark.parametrize("use_remove_padding", [True, False], ids=["remove_padding", "padded"])
PATHS = pytest.mark.parametrize("fused_actor", [True, False], ids=["single_pass", "verl_passes"])
# float32 CPU: same math in another order (the fused op's online softmax vs torch's log_softmax)
OUTPUT_TOLERANCE = dict(rtol=0, atol=2e-5)
STEP_TOLERANCE = dict(rtol=1e-4, atol=1e-6)


def batch(**meta_info):
    return padded_batch(PROMPTS, RESPONSES, micro_batch_size=2, temperature=TEMPERATURE, use_dynamic_bsz=False,
                        **meta_info)


def request(fused_actor=True, digit_ids=DIGIT_IDS, **options) -> dict:
    texts = PAIR_TEXTS[: len(digit_ids)]
    return NTLRequest(digit_ids=digit_ids, number_texts=texts, fused_actor=fused_actor, **options).as_dict()


def targets(number_ids=DIGIT_IDS) -> torch.Tensor:
    """``[B, R]`` slot of each response number token (-100 elsewhere and beyond the response)."""
    responses = batch().batch["responses"]
    slots = digit_targets(responses, torch.tensor(number_ids))
    return torch.where(batch().batch["response_mask"].bool(), slots, -100)


def update(actor, data):
    """One ``update_policy`` (SGD, lr 1): (metrics, the parameters' change = -gradient)."""
    before = parameters(actor.actor_module)
    metrics = actor.update_policy(data)
    after = parameters(actor.actor_module)
    return metrics, {name: after[name] - before[name] for name in before}


def assert_same_step(step, expected, **tolerance):
    for name in expected:
        torch.testing.assert_close(step[name], expected[name], **(tolerance or STEP_TOLERANCE), msg=name)


@LAYOUTS
def test_a_batch_without_request_is_verls(use_remove_padding):
    verl_actor = new_actor(use_remove_padding=use_remove_padding)
    ntl_actor = new_actor(NTLDataParallelPPOActor, use_remove_padding=use_remove_padding)
    expected, actual = (actor.compute_log_prob(batch(), calculate_entropy=True) for actor in (verl_actor, ntl_actor))
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key])
    data = training_batch(batch(), ADVANTAGES, **{NTL_TARGETS_KEY: targets()})  # targets without request: ignored
    (expected_metrics, expected_step), (metrics, step) = update(verl_actor, data), update(ntl_actor, data)
    assert metrics == expected_metrics
    assert_same_step(step, expected_step, rtol=0, atol=0)


@LAYOUTS
@PATHS
def test_request_adds_number_rows_and_a_zero_coef_loss_keeps_verls_update(use_remove_padding, fused_actor):
    verl_actor = new_actor(use_remove_padding=use_remove_padding, entropy_coeff=0.01)
    ntl_actor = new_actor(NTLDataParallelPPOActor, use_remove_padding=use_remove_padding, entropy_coeff=0.01)
    expected = verl_actor.compute_log_prob(batch(), calculate_entropy=True)
    actual = ntl_actor.compute_log_prob(batch(**{NTL_REQUEST_KEY: request(fused_actor)}), calculate_entropy=True)
    assert actual.keys() == {*expected.keys(), DIGIT_LOG_PROBS_KEY}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], **OUTPUT_TOLERANCE)
    assert [tuple(rows.shape) for rows in actual[DIGIT_LOG_PROBS_KEY]] == [(4, 10), (2, 10), (2, 10), (1, 10)]

    fields = {NTL_TARGETS_KEY: targets()}
    expected_metrics, expected_step = update(verl_actor, training_batch(batch(), ADVANTAGES, **fields))
    ntl_data = training_batch(batch(**{NTL_REQUEST_KEY: request(fused_actor, loss_coef=0.0)}), ADVANTAGES, **fields)
    metrics, step = update(ntl_actor, ntl_data)
    assert_same_step(step, expected_step)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        torch.testing.assert_close(torch.tensor(metrics[key]), torch.tensor(expected_metrics[key]), rtol=1e-5,
                                   atol=1e-7)
    assert metrics["actor/ntl_loss"] > 0
    torch.testing.assert_close(metrics["actor/loss"],
                               metrics["actor/pg_loss"] - 0.01 * metrics["actor/entropy_loss"], rtol=0, atol=1e-7)


def reference_ntl_terms(number_ids, weights, method):
    """Per micro-batch of 2 samples: verl's token-mean ``agg_loss`` over the response tokens of the reference per-token
    NTL at the targets (plain Hugging Face
    forward of each sample alone, logits / temperature), scaled by verl's 1 / gradient_accumulation, differentiable
    w.r.t. a fresh copy of the tiny model; returns (model, [term per micro-batch])."""
    import copy

    model = copy.deepcopy(tiny_model())
    values = torch.tensor([float(int(text)) for text in PAIR_TEXTS[: len(number_ids)]])
    all_targets = targets(number_ids)
    terms = []
    for first in (0, 2):
        per_token, masks = [], []
        for sample in (first, first + 1):
            prompt, response = PROMPTS[sample], RESPONSES[sample]
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1: -1] / TEMPERATURE
            sample_targets = all_targets[sample]
            width = len(response)
            ntl = ntl_loss_reference(logits, sample_targets[:width], torch.tensor(number_ids), method=method,
                                     reduction="none", number_values=values)[0] * weights[sample, :width]
            per_token.append(torch.nn.functional.pad(ntl, (0, 5 - width)))
            masks.append(sample_targets != -100)
        ntl_matrix, mask = torch.stack(per_token), torch.stack(masks)
        response_mask = batch().batch["response_mask"][first: first + 2]
        terms.append(agg_loss(loss_mat=ntl_matrix * mask, loss_mask=response_mask, loss_agg_mode="token-mean") / 2)
    return model, terms


# each path in each layout, each number-token set on each path
COMBINATIONS = pytest.mark.parametrize(("number_ids", "use_remove_padding", "fused_actor"), [
    (DIGIT_IDS, True, True), (PAIR_IDS, False, True), (PAIR_IDS, True, False), (DIGIT_IDS, False, False),
], ids=["10_remove_padding_single_pass", "110_padded_single_pass", "110_remove_padding_verl_passes",
        "10_padded_verl_passes"])


@COMBINATIONS
def test_loss_coef_adds_loss_coef_times_the_aggregated_reference_ntl(use_remove_padding, fused_actor, number_ids):
    loss_coef, method = 0.5, "was"
    weights = torch.ones(4, 5)
    weights[0, 2] = 3.0  # a place weight on sample 0's second digit
    fields = {NTL_TARGETS_KEY: targets(number_ids), NTL_WEIGHTS_KEY: weights}
    verl_actor = new_actor(use_remove_padding=use_remove_padding)
    ntl_actor = new_actor(NTLDataParallelPPOActor, use_remove_padding=use_remove_padding)
    _, verl_step = update(verl_actor, training_batch(batch(), ADVANTAGES, **fields))
    ntl_request = request(fused_actor, number_ids, loss_coef=loss_coef, loss_method=method)
    metrics, step = update(ntl_actor, training_batch(batch(**{NTL_REQUEST_KEY: ntl_request}), ADVANTAGES, **fields))

    model, terms = reference_ntl_terms(number_ids, weights, method)
    torch.testing.assert_close(metrics["actor/ntl_loss"], sum(terms).item(), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["actor/loss"], metrics["actor/pg_loss"] + loss_coef * metrics["actor/ntl_loss"],
                               rtol=0, atol=1e-7)
    assert len(metrics["actor/ntl_digit_acc"]) == 2 and all(0 <= acc <= 1 for acc in metrics["actor/ntl_digit_acc"])
    (loss_coef * sum(terms)).backward()
    ntl_gradient = {name: parameter.grad for name, parameter in model.named_parameters()}
    # SGD with lr 1: the NTL actor's step is verl's minus loss_coef times the reference term's gradient
    assert_same_step({name: verl_step[name] - step[name] for name in step}, ntl_gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused_actor", [True, False], ids=["single_pass", "verl_passes"])
def test_a_micro_batch_without_targets_adds_nothing_and_text_batches_with_empty_multi_modal_inputs_run(fused_actor):
    """The legacy actor aggregates per micro-batch: one whose responses have no target (every wrong answer) adds an
    NTL term of 0, not 0/0. verl 0.7.1's agent loop gives every text sample an empty ``multi_modal_inputs``."""
    fields = {NTL_TARGETS_KEY: targets().index_fill(0, torch.tensor([2, 3]), -100)}  # micro-batch 2: no targets
    data = training_batch(batch(**{NTL_REQUEST_KEY: request(fused_actor, loss_coef=0.5)}), ADVANTAGES, **fields)
    data.non_tensor_batch["multi_modal_inputs"] = np.array([{} for _ in range(4)], dtype=object)
    metrics, step = update(new_actor(NTLDataParallelPPOActor), data)
    assert all(math.isfinite(value) for key in ("actor/ntl_loss", "actor/loss", "actor/pg_loss")
               for value in np.ravel(metrics[key]))
    assert metrics["actor/ntl_loss"] > 0 and len(metrics["actor/ntl_digit_acc"]) == 1
    assert all(bool(torch.isfinite(change).all()) for change in step.values())


def hugging_face_number_rows(number_ids, temperature) -> list[torch.Tensor]:
    """Per sample, float64 log-softmax over the K number-token logits of a plain Hugging Face forward of the sample
    alone, at the rows that predict the response's number tokens."""
    import copy

    model = copy.deepcopy(tiny_model()).double()
    rows = []
    for prompt, response in zip(PROMPTS, RESPONSES, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1: -1]
        is_number = torch.isin(torch.tensor(response), torch.tensor(number_ids))
        rows.append(torch.log_softmax(logits[is_number][:, list(number_ids)] / temperature, -1))
    return rows


def worker(actor, temperature=TEMPERATURE, cls=NTLActorRolloutRefWorker):
    """The worker class without Ray: what its ``compute_log_prob`` reads, around ``actor``."""
    instance = object.__new__(cls)
    log_prob_settings = {"log_prob_micro_batch_size_per_gpu": 2, "log_prob_max_token_len_per_gpu": 16,
                         "log_prob_use_dynamic_bsz": True, "temperature": temperature}
    instance.__dict__.update(
        actor=actor, _is_actor=True, _is_offload_param=False, _world_size=1,
        config=OmegaConf.create({"rollout": log_prob_settings, "ref": log_prob_settings}),
        tokenizer=SimpleNamespace(pad_token_id=0), ulysses_sharding_manager=contextlib.nullcontext(),
    )
    return instance


@COMBINATIONS
def test_worker_compute_log_prob_returns_the_number_rows_of_a_plain_forward(number_ids, use_remove_padding,
                                                                           fused_actor):
    """The contract: ``non_tensor_batch["digit_log_probs"]``, an object array of B float32 CPU ``[m_b, K]``, in
    sample order also under verl's dynamic batch sizes (which reorder samples into micro-batches)."""
    actor = new_actor(NTLDataParallelPPOActor, use_remove_padding=use_remove_padding)
    data = padded_batch(PROMPTS, RESPONSES, **{NTL_REQUEST_KEY: request(fused_actor, number_ids)})
    output = worker(actor).compute_log_prob(data)
    rows = output.non_tensor_batch[DIGIT_LOG_PROBS_KEY]
    assert rows.dtype == object and rows.shape == (4,)
    expected = hugging_face_number_rows(number_ids, TEMPERATURE)
    for actual, wanted in zip(rows, expected, strict=True):
        assert actual.dtype == torch.float32 and actual.device.type == "cpu"
        assert actual.shape == (len(wanted), len(number_ids))
        torch.testing.assert_close(actual.double(), wanted, rtol=0, atol=1e-5)
    assert {"old_log_probs", "entropys"} <= set(output.batch.keys())
    plain = worker(new_actor(use_remove_padding=use_remove_padding)).compute_log_prob(padded_batch(PROMPTS, RESPONSES))
    assert DIGIT_LOG_PROBS_KEY not in plain.non_tensor_batch
    torch.testing.assert_close(output.batch["old_log_probs"], plain.batch["old_log_probs"], **OUTPUT_TOLERANCE)


@pytest.mark.parametrize("worker_cls", [NTLActorRolloutRefWorker, NTLAsyncActorRolloutRefWorker])
def test_worker_init_model_installs_the_ntl_actor_on_verls_module_and_optimizer(worker_cls, monkeypatch):
    def verl_init_model(self):  # what verl's init_model leaves behind for the actor role
        self.actor = new_actor()

    for name in ("init_model", "compute_log_prob"):  # verl's worker group exposes registered methods only
        assert getattr(worker_cls, name).__dict__[MAGIC_ATTR] == getattr(fsdp_workers.ActorRolloutRefWorker,
                                                                         name).__dict__[MAGIC_ATTR]
    monkeypatch.setattr(fsdp_workers.ActorRolloutRefWorker, "init_model", verl_init_model)
    instance = worker(None, cls=worker_cls)
    instance.init_model()
    assert type(instance.actor) is NTLDataParallelPPOActor
    instance._is_actor = False  # the reference role keeps verl's actor
    instance.init_model()
    assert type(instance.actor) is DataParallelPPOActor


def test_settings_the_ntl_actor_cannot_serve_are_refused():
    with pytest.raises(ValueError, match="calculate_sum_pi_squared"):
        new_actor(NTLDataParallelPPOActor, calculate_sum_pi_squared=True).compute_log_prob(
            batch(**{NTL_REQUEST_KEY: request(fused_actor=True)}))
    actor = new_actor(NTLDataParallelPPOActor)
    actor.use_fused_kernels = True
    with pytest.raises(NotImplementedError, match="use_fused_kernels"):
        actor.compute_log_prob(batch(**{NTL_REQUEST_KEY: request()}))
