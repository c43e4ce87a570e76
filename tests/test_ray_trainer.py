"""``NTLRayPPOTrainer`` (verl's DataProto trainer with the NTL reward) through verl's own stage code, without Ray.

The worker groups are in-memory stand-ins with the contracts of verl's workers: engine workers (no-padding
TensorDict in, the engine's ``model_output`` out, ``digit_log_probs`` nested ``[B, m, K]``) and, where the installed
verl still has them (0.7.x), legacy workers (padded DataProto in, ``non_tensor_batch["digit_log_probs"]`` out).
Everything else - verl's ``_compute_old_log_prob`` / ``_compute_ref_log_prob`` / ``_update_actor``, its padding
conversions, ``extract_reward``, ``reduce_metrics`` and ntl_reward's Final reward - is real. Runs under every verl the
project supports (0.7.1, 0.8.0, 0.9.1).
"""

import importlib
import importlib.util
import inspect
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.reward import extract_reward
from verl.utils import tensordict_utils as tu
from verl.utils.metric import reduce_metrics

from ntl_kernels import QWEN2_5_DIGIT_IDS, qwen2_5_tokenizer
from ntl_reward.final_answer import compute_score
from verl_integration.ray_trainer import NTLRayPPOTrainer, install_ray_trainer, ray_trainer_installed
from verl_integration.releases import verl_line
from verl_integration.startup import ntl_requests
from verl_integration.request import NTL_REQUEST_KEY, NTL_TARGETS_KEY, NTL_WEIGHTS_KEY, RESPONSE_ROWS_KEY

REPO = Path(__file__).resolve().parents[1]
TAU = 0.5
DIGIT_IDS = list(QWEN2_5_DIGIT_IDS)
HAS_LEGACY_WORKERS = "use_legacy_worker_impl" in inspect.getsource(RayPPOTrainer._compute_old_log_prob)


@pytest.fixture(autouse=True)
def plug_in_installed(monkeypatch):
    """verl 0.7: the NTL worker and trainer in verl's places, as the plug-in installs them (its start-up check looks
    for them), undone after the test."""
    if not HAS_LEGACY_WORKERS:
        return
    from verl_integration.legacy_actor import WORKERS as NTL_WORKERS
    from verl_integration.legacy_actor import install_legacy_worker

    slots = [*verl_line().trainer_class_slots(), *(("verl.workers.fsdp_workers", name) for name in NTL_WORKERS)]
    for module_name, attribute in slots:
        module = importlib.import_module(module_name)
        monkeypatch.setattr(module, attribute, getattr(module, attribute))
    install_legacy_worker()
    install_ray_trainer()


def ntl_config(loss_place_weighting="none"):
    return OmegaConf.create({
        "trainer": {"use_v1": False},
        "ntl": {"mode": "final_answer", "loss_coef": 0.1, "loss_targets": "final_answer",
                "loss_place_weighting": loss_place_weighting, "response_rows_only": True},
        "reward": {"custom_reward_function": {
            "path": str(REPO / "ntl_reward" / "final_answer.py"), "name": "compute_score",
            "reward_kwargs": {"tau": TAU},
        }},
        "actor_rollout_ref": {
            "model": {"external_lib": "verl_integration.plugin"},
            "actor": {"strategy": "fsdp2", "calculate_entropy": False, "entropy_coeff": 0.0,
                      "ppo_mini_batch_size": 2, "ppo_epochs": 1, "data_loader_seed": 0, "shuffle": False},
            "rollout": {"temperature": 1.0, "n": 1, "multi_turn": {"enable": False}},
        },
    })


def rollout_batch(tokenizer) -> tuple[DataProto, list[str], list[list[int]]]:
    """Two rollouts of "What is 9 + 9?" (ground truth 18) as verl's agent loop leaves them: left-padded prompts,
    right-padded responses, the rollout's exact-match score on each response's last token."""
    texts = ["So 9 + 9 = 18.\n#### 18", "I get #### 17"]
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in ("What is 9 + 9?", "9 + 9?")]
    responses = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    prompt_width, width = max(map(len, prompts)), max(map(len, responses)) + 2
    pad = tokenizer.pad_token_id
    rows = []
    for prompt, response in zip(prompts, responses):
        left, right = prompt_width - len(prompt), width - len(response)
        rows.append(([pad] * left + prompt, [0] * left + [1] * len(prompt), response + [pad] * right,
                     [1] * len(response) + [0] * right))
    prompt_ids, prompt_mask, response_ids, response_mask = (torch.tensor([row[i] for row in rows]) for i in range(4))
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    rm_scores = torch.zeros(2, width)
    rm_scores[0, len(responses[0]) - 1] = 1.0
    batch = DataProto.from_single_dict({
        "prompts": prompt_ids, "responses": response_ids, "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
        "attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "response_mask": response_mask, "rm_scores": rm_scores,
        "uid": np.array(["q0", "q0"], dtype=object), "data_source": np.array(["openai/gsm8k"] * 2, dtype=object),
        "reward_model": np.array([{"style": "rule", "ground_truth": "18"}] * 2, dtype=object),
        "extra_info": np.array([{"index": 0}] * 2, dtype=object),
    })
    return batch, texts, responses


def number_rows(responses: list[list[int]]) -> list[torch.Tensor]:
    """A fixed, distinct ``[m_b, 10]`` log-prob row per number token of each response (the actor's, planted)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.log_softmax(torch.randn(sum(t in DIGIT_IDS for t in ids), len(DIGIT_IDS), generator=generator), -1)
            for ids in responses]


class EngineWorkerGroup:
    """verl's engine workers' calls: ``compute_log_prob`` returns the engine's model output (``digit_log_probs`` only
    for a batch with an NTL request), ``update_actor`` the actor metrics. Records what each call received."""

    def __init__(self, rows: list[torch.Tensor]):
        self.rows, self.received = rows, {}

    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        self.received.setdefault("compute_log_prob", []).append(data)
        zeros = torch.nested.as_nested_tensor([torch.zeros(len(ids)) for ids in data["input_ids"].unbind()],
                                              layout=torch.jagged)
        output = {"log_probs": zeros, "entropy": zeros.clone()}
        if tu.get(data, NTL_REQUEST_KEY) is not None:
            output["digit_log_probs"] = torch.nested.as_nested_tensor(self.rows, layout=torch.jagged)
        return tu.get_tensordict(tensor_dict=output, non_tensor_dict={"metrics": {"mfu": 0.0}})

    def update_actor(self, data: TensorDict) -> TensorDict:
        self.received["update_actor"] = data
        return tu.get_tensordict(tensor_dict={}, non_tensor_dict={"metrics": {"mfu": 0.0, "pg_loss": [0.25]}})


class LegacyWorkerGroup:
    """verl 0.7's legacy (fsdp_workers) calls, with the NTL worker's contract: padded DataProto in; the request in
    ``meta_info``; ``compute_log_prob`` returns ``non_tensor_batch["digit_log_probs"]`` (B tensors ``[m_b, K]``)."""

    def __init__(self, rows: list[torch.Tensor]):
        self.rows, self.received = rows, {}

    def compute_log_prob(self, data: DataProto) -> DataProto:
        self.received.setdefault("compute_log_prob", []).append(data)
        zeros = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
        non_tensor = {}
        if NTL_REQUEST_KEY in data.meta_info:
            non_tensor["digit_log_probs"] = np.array(self.rows + [None], dtype=object)[:-1]  # B tensors, 1-d
        return DataProto.from_dict(tensors={"old_log_probs": zeros, "entropys": zeros.clone()},
                                   non_tensors=non_tensor)

    def compute_ref_log_prob(self, data: DataProto) -> DataProto:
        self.received["compute_ref_log_prob"] = data
        return DataProto.from_dict(tensors={"ref_log_prob": torch.zeros_like(data.batch["responses"],
                                                                             dtype=torch.float32)})

    def update_actor(self, data: DataProto) -> DataProto:
        self.received["update_actor"] = data
        return DataProto(meta_info={"metrics": {"actor/pg_loss": [0.25]}})


def make_trainer(workers, *, legacy: bool, loss_place_weighting="none", ntl: bool = True) -> NTLRayPPOTrainer:
    """``NTLRayPPOTrainer`` with what its ``__init__`` sets (the NTL settings and request) and the attributes verl's
    stages read, without Ray: the reference policy in the actor's workers. ``ntl=False``: a config without any NTL
    setting (a plain verl run in a process where the plug-in is installed)."""
    trainer = object.__new__(NTLRayPPOTrainer)
    trainer.config = ntl_config(loss_place_weighting)
    trainer.tokenizer = qwen2_5_tokenizer()
    trainer.ntl_enabled = ntl
    if ntl:
        trainer.configure_ntl(trainer.config)
        trainer.ntl_request = trainer.make_ntl_request(trainer.tokenizer)
    trainer.ntl_step_metrics = {}
    trainer.global_steps = 1
    trainer.actor_rollout_wg = trainer.ref_policy_wg = workers
    trainer.ref_in_actor = True
    trainer.use_legacy_worker_impl = "auto" if legacy else "disable"  # read by verl 0.7.x only
    return trainer


def fit_step(trainer: NTLRayPPOTrainer, batch: DataProto):
    """The part of ``RayPPOTrainer.fit`` from the reward to the actor update, in its order: the reward tensor is
    read before old_log_prob and used as the score after it. Returns (batch, reward tensor, logged metrics)."""
    reward_tensor, _ = extract_reward(batch)
    old_log_prob, _ = trainer._compute_old_log_prob(batch)
    old_log_prob.batch.pop("entropys")
    batch = batch.union(old_log_prob)
    batch = batch.union(trainer._compute_ref_log_prob(batch))
    batch.batch["token_level_scores"] = reward_tensor
    actor_output = trainer._update_actor(batch)
    return batch, reward_tensor, reduce_metrics(actor_output.meta_info["metrics"])


def expected_scores(texts, responses, rows) -> list[float]:
    """The Final reward of each response from its planted number-token rows, computed independently."""
    return [compute_score("openai/gsm8k", text, "18", tau=TAU, ntl_info={
        "digit_log_probs": number_rows_of, "response_ids": torch.tensor([t for t in ids if t in DIGIT_IDS]),
        "digit_ids": torch.tensor(DIGIT_IDS)})["score"] for text, ids, number_rows_of in zip(texts, responses, rows)]


WORKERS = [
    pytest.param(False, id="engine_workers", marks=pytest.mark.skipif(
        HAS_LEGACY_WORKERS, reason="verl 0.7: NTL runs on the legacy workers (engine workers are refused at start-up)")),
    pytest.param(True, id="legacy_workers", marks=pytest.mark.skipif(
        not HAS_LEGACY_WORKERS, reason="this verl's RayPPOTrainer runs engine workers only (legacy: verl 0.7.x)")),
]


@pytest.mark.parametrize("legacy", WORKERS)
@pytest.mark.parametrize("loss_place_weighting", ["none", "place"])
def test_ntl_reward_replaces_the_rollout_score_and_reaches_the_actor_update(legacy, loss_place_weighting):
    tokenizer = qwen2_5_tokenizer()
    batch, texts, responses = rollout_batch(tokenizer)
    rows = number_rows(responses)
    workers = (LegacyWorkerGroup if legacy else EngineWorkerGroup)(rows)
    trainer = make_trainer(workers, legacy=legacy, loss_place_weighting=loss_place_weighting)
    batch, reward_tensor, metrics = fit_step(trainer, batch)

    # the score fit uses is the NTL score, written into the tensor fit read before old_log_prob
    expected = expected_scores(texts, responses, rows)
    assert 0 < expected[1] < 1 and expected[0] != 1.0  # not the rollout's exact-match scores (1, 0)
    for sample, ids in enumerate(responses):
        assert reward_tensor[sample, len(ids) - 1].item() == pytest.approx(expected[sample], abs=1e-6)
        assert reward_tensor[sample].sum().item() == pytest.approx(expected[sample], abs=1e-6)
    assert batch.batch["rm_scores"] is reward_tensor

    # the step's reward metrics are logged with the actor's, once
    assert metrics["reward/ntl_score"] == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert metrics["reward/exact_match"] == 0.5 and metrics["actor/pg_loss"] == 0.25
    assert trainer.ntl_step_metrics == {}

    # the update got the request and the loss targets: the final answer's digits against the ground truth "18"
    update = workers.received["update_actor"]
    targets = batch.batch[NTL_TARGETS_KEY]
    assert targets.dtype == torch.int64 and targets.shape == batch.batch["responses"].shape
    for sample in range(len(responses)):  # "#### 18" and "#### 17" both train towards 1, 8; no other digit
        assert targets[sample][targets[sample] != -100].tolist() == [1, 8]
    assert (NTL_WEIGHTS_KEY in batch.batch.keys()) == (loss_place_weighting == "place")
    if legacy:
        assert NTL_REQUEST_KEY in update.meta_info
        assert torch.equal(update.batch[NTL_TARGETS_KEY], targets)
    else:
        assert tu.get(update, NTL_REQUEST_KEY) == trainer.ntl_request.as_dict()
        assert tu.get(update, RESPONSE_ROWS_KEY) is True
        sent = update[NTL_TARGETS_KEY]
        assert sent.is_nested  # NTLFSDPEngine's form: [B, j_response], each row as long as its response
        for sample, ids in enumerate(responses):
            assert torch.equal(sent[sample], targets[sample, :len(ids)])
        if loss_place_weighting == "place":
            assert update[NTL_WEIGHTS_KEY].is_nested


@pytest.mark.parametrize("legacy", WORKERS)
def test_no_request_reaches_the_reference_or_stays_after_a_stage(legacy):
    """The reference policy's call gets ``ntl.response_rows_only`` (engine workers) but no request and no targets;
    after each stage the worker groups are verl's own again and the batch carries no request."""
    batch, _, responses = rollout_batch(qwen2_5_tokenizer())
    workers = (LegacyWorkerGroup if legacy else EngineWorkerGroup)(number_rows(responses))
    trainer = make_trainer(workers, legacy=legacy)
    batch, _, _ = fit_step(trainer, batch)

    old_log_prob_call, reference_call = (workers.received["compute_log_prob"] + [None])[:2]
    if legacy:
        reference_call = workers.received["compute_ref_log_prob"]
        assert NTL_REQUEST_KEY in old_log_prob_call.meta_info
        assert NTL_REQUEST_KEY not in reference_call.meta_info
    else:
        assert tu.get(old_log_prob_call, NTL_REQUEST_KEY) is not None
        assert tu.get(reference_call, NTL_REQUEST_KEY) is None
        assert tu.get(reference_call, RESPONSE_ROWS_KEY) is True
        assert NTL_TARGETS_KEY not in reference_call.keys()
    assert NTL_REQUEST_KEY not in batch.meta_info and NTL_REQUEST_KEY not in batch.non_tensor_batch
    assert "digit_log_probs" not in batch.non_tensor_batch
    assert not {"compute_log_prob", "compute_ref_log_prob", "update_actor"} & set(vars(workers))


class PlainEngineWorkerGroup(EngineWorkerGroup):
    """Actor workers without the NTL engine: verl's outputs only, whatever the batch asks."""

    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        output = super().compute_log_prob(data)
        output.pop("digit_log_probs", None)
        return output


def test_an_actor_without_the_ntl_engine_is_an_error_naming_the_plug_in():
    batch, _, responses = rollout_batch(qwen2_5_tokenizer())
    workers = PlainEngineWorkerGroup(number_rows(responses))
    trainer = make_trainer(workers, legacy=False)
    with pytest.raises(RuntimeError, match="external_lib=verl_integration.plugin"):
        trainer._compute_old_log_prob(batch)
    assert "compute_log_prob" not in vars(workers)  # verl's method again, also after the error


@pytest.mark.parametrize("legacy", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAS_LEGACY_WORKERS, reason="this verl has no legacy workers"))])
def test_a_run_without_ntl_settings_runs_verls_trainer_unchanged(legacy):
    """The plug-in puts NTLRayPPOTrainer in verl's place for every run of the process; a config that does not ask for
    NTL gets verl's stages as they are: no request, no targets, the rollout's scores."""
    batch, _, responses = rollout_batch(qwen2_5_tokenizer())
    rollout_scores = batch.batch["rm_scores"].clone()
    workers = (LegacyWorkerGroup if legacy else EngineWorkerGroup)(number_rows(responses))
    trainer = make_trainer(workers, legacy=legacy, ntl=False)
    batch, reward_tensor, metrics = fit_step(trainer, batch)
    assert torch.equal(reward_tensor, rollout_scores)
    assert NTL_TARGETS_KEY not in batch.batch.keys() and not any(key.startswith("reward/ntl") for key in metrics)
    calls = [call for received in workers.received.values() for call in (received if isinstance(received, list)
                                                                            else [received])]
    assert calls and not any(NTL_REQUEST_KEY in (call.meta_info if isinstance(call, DataProto) else call.keys())
                             for call in calls)
    assert not ntl_requests(OmegaConf.create({"trainer": {"use_v1": False}}))


def test_install_makes_the_task_runner_build_the_ntl_trainer(monkeypatch):
    slots = verl_line().trainer_class_slots()
    for module_name, attribute in slots:  # restored after the test
        module = importlib.import_module(module_name)
        monkeypatch.setattr(module, attribute, getattr(module, attribute))
    assert install_ray_trainer() == [f"{module}.{attribute}" for module, attribute in slots]
    assert install_ray_trainer() == [f"{module}.{attribute}" for module, attribute in slots]  # idempotent
    assert ray_trainer_installed()
    if slots[0][0] == "verl.trainer.main_ppo_v0":  # verl 0.9.x: TaskRunner.run reads main_ppo_v0's name
        namespace = vars(importlib.import_module("verl.trainer.main_ppo_v0"))
    else:  # verl 0.7 / 0.8: main_ppo's body, as `python -m verl.trainer.main_ppo` runs it, binds the class
        namespace = runpy.run_module("verl.trainer.main_ppo", run_name="ntl_install_check")
    assert namespace["RayPPOTrainer"] is NTLRayPPOTrainer
    assert "TaskRunner" in namespace
