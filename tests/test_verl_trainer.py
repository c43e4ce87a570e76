"""The NTL trainer's reward step inside verl's own old_log_prob -> advantage path, with the real engine on CPU.

TransferQueue and the Ray worker group are replaced by in-memory stand-ins with the same calls; everything else —
verl's ``_compute_old_log_prob`` and ``_compute_advantage``, the engine, ntl_reward's Final reward — is real.
"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1 import get_trainer_cls as trainer_mode_class, trainer_base
from verl.utils import tensordict_utils as tu

import verl_integration.trainer as ntl_trainer
from ntl_kernels import qwen2_5_tokenizer
from ntl_reward.final_answer import compute_score
from tests.verl_cpu import DIGIT_IDS, batch_for, digit_rows_in_place, infer, shared_engine
from verl_integration.inprocess import engine_settings
from verl_integration.config import NTL_SCHEDULES
from verl_integration.trainer import NTLPPOTrainer, NTLPPOTrainerColocateAsync, NTLPPOTrainerSeparateAsync

REPO = Path(__file__).resolve().parents[1]
TAU = 0.5


class InMemoryTransferQueue:
    """The four TransferQueue calls the trainer makes, over one batch held as a TensorDict."""

    def __init__(self, data: TensorDict):
        self.data = data

    def kv_batch_get(self, keys, partition_id, select_fields):
        return self.data.select(*[field for field in select_fields if field in self.data.keys()])

    def kv_batch_put(self, keys, partition_id, fields):
        self.data.update(fields)
        return KVBatchMeta(keys=list(keys), tags=[{} for _ in keys], partition_id=partition_id)


class EngineWorkerGroup:
    """``actor_rollout_wg.compute_log_prob`` as verl's worker runs it: stored fields + extra_info -> engine."""

    def __init__(self, engine, queue: InMemoryTransferQueue):
        self.engine, self.queue = engine, queue

    def compute_log_prob(self, batch: KVBatchMeta):
        fields = ["input_ids", "position_ids", "prompts", "responses", "response_mask", "loss_mask"]
        data = self.queue.data.select(*fields)
        tu.assign_non_tensor(data, **batch.extra_info, **engine_settings(self.engine))
        output = infer(self.engine, data)
        self.queue.data.update(TensorDict(dict(output), batch_size=data.batch_size))
        return batch


def ntl_config(fused_actor):
    return OmegaConf.create({
        "trainer": {"use_v1": True, "v1": {"trainer_mode": "ntl"}},
        "ntl": {"mode": "final_answer", "loss_coef": 0.1, "fused_actor": fused_actor},
        "reward": {"custom_reward_function": {
            "path": str(REPO / "ntl_reward" / "final_answer.py"), "name": "compute_score",
            "reward_kwargs": {"tau": TAU},
        }},
        "actor_rollout_ref": {
            "model": {"use_fused_kernels": False, "external_lib": "verl_integration.plugin"},
            "actor": {"strategy": "fsdp2", "ulysses_sequence_parallel_size": 1, "loss_agg_mode": "token-mean",
                      "loss_scale_factor": None},
            "rollout": {"temperature": 1.0, "calculate_log_probs": False, "n": 2},
        },
        "algorithm": {"adv_estimator": "grpo", "gamma": 1.0, "lam": 1.0, "use_kl_in_reward": False,
                      "norm_adv_by_std_in_grpo": True},
    })


def run_reward_step(monkeypatch, data: TensorDict, fused_actor="auto"):
    """verl's ``_compute_old_log_prob`` (with the NTL reward step) and ``_compute_advantage`` on ``data``, through the
    NTL trainer with in-memory stand-ins for TransferQueue and the worker group.

    Returns (the stored fields afterwards, the token-level rewards the advantage read, the step's metrics, the batch).
    """
    queue = InMemoryTransferQueue(data)
    monkeypatch.setattr(trainer_base, "tq", queue)
    monkeypatch.setattr(ntl_trainer, "tq", queue)
    read_by_advantage = {}
    real_advantage = trainer_base.compute_advantage_for_multi_trajectories

    def spy(data, **kwargs):
        read_by_advantage["token_level_rewards"] = data.batch["token_level_rewards"].clone()
        return real_advantage(data, **kwargs)

    monkeypatch.setattr(trainer_base, "compute_advantage_for_multi_trajectories", spy)

    tokenizer = qwen2_5_tokenizer()
    trainer = object.__new__(NTLPPOTrainer)  # the parts of __init__ this path needs, without Ray
    trainer.config = ntl_config(fused_actor)
    trainer.configure_ntl(trainer.config)
    trainer.tokenizer = tokenizer
    trainer.ntl_request = trainer.make_ntl_request(tokenizer)
    trainer.global_steps = 1
    trainer.actor_rollout_wg = EngineWorkerGroup(shared_engine(), queue)
    count = len(data)
    batch = KVBatchMeta(keys=[f"q0_{i}_0" for i in range(count)], tags=[{}] * count, partition_id="train")

    metrics = {}
    batch = trainer._compute_old_log_prob(batch, metrics=metrics)
    trainer._compute_advantage(batch, metrics=metrics)
    assert "advantages" in queue.data.keys()
    return queue.data, read_by_advantage["token_level_rewards"], metrics, batch


def gsm8k_fields(data: TensorDict, ground_truth: str) -> None:
    count = len(data)
    tu.assign_non_tensor(
        data, uid=["q0"] * count, data_source=["openai/gsm8k"] * count,
        reward_model=[{"style": "rule", "ground_truth": ground_truth}] * count, extra_info=[{"index": 0}] * count,
    )


@pytest.mark.parametrize("fused_actor", ["auto", False], ids=["single_pass", "verl_passes"])
def test_reward_step_puts_ntl_rewards_where_the_advantage_reads_them(monkeypatch, fused_actor):
    tokenizer = qwen2_5_tokenizer()
    texts = ["So 9 + 9 = 18.\n#### 18", "I get #### 17"]  # correct, wrong; ground truth 18 for both
    prompt = tokenizer.encode("What is 9 + 9?", add_special_tokens=False)
    responses = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    width = max(map(len, responses))
    rollout_scores = torch.zeros(2, width)
    rollout_scores[0, len(responses[0]) - 1] = 1.0  # the rollout's exact-match score
    data = batch_for(shared_engine(), [prompt, prompt], responses, rm_scores=rollout_scores)
    gsm8k_fields(data, "18")
    stored, rewards, metrics, batch = run_reward_step(monkeypatch, data, fused_actor)

    # the Final reward recomputed independently from the engine's digit log-probs of each response (the rows of
    # its digit tokens)
    expected = [
        compute_score("openai/gsm8k", text, "18", ntl_info={
            "digit_log_probs": rows, "response_ids": torch.tensor([t for t in ids if t in DIGIT_IDS]),
            "digit_ids": torch.tensor(DIGIT_IDS),
        }, tau=TAU)["score"]
        for text, ids, rows in zip(texts, responses, stored["digit_log_probs"].unbind())
    ]
    for sample, ids in enumerate(responses):
        assert rewards[sample, len(ids) - 1].item() == pytest.approx(expected[sample], abs=1e-6)
        assert rewards[sample].sum().item() == pytest.approx(expected[sample], abs=1e-6)
    assert 0 < expected[1] < 1 and expected[0] != 1.0  # not the rollout's exact-match scores (1, 0)

    assert metrics["reward/exact_match"] == 0.5
    assert metrics["reward/ntl_coverage"] == 1.0
    assert metrics["reward/ntl_score"] == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert math.isfinite(metrics["reward/ntl_loss"])
    # loss targets (default "correct_generated"): the correct response's own digits, nothing for the wrong one
    targets = stored["ntl_targets"].unbind()
    generated = [[DIGIT_IDS.index(t) for t in ids if t in DIGIT_IDS] for ids in responses]
    assert [t for t in targets[0].tolist() if t != -100] == generated[0]
    assert torch.all(targets[1] == -100)
    assert "ntl_request" not in batch.extra_info


def test_tool_output_of_a_multi_turn_rollout_is_neither_scored_nor_trained(monkeypatch):
    """verl's agent loop masks tool output inside the response (``response_mask`` 0, attention 1): the reward is the
    Final reward of the generated tokens alone, on the response's last token as verl places it, and no digit of the
    tool output is a loss target."""
    tokenizer = qwen2_5_tokenizer()
    turns = [  # (text, generated by the policy?) per response; the second one ends in tool output
        [("Let me ask the calculator.", True), ("\n<tool>#### 7342</tool>\n", False),
         ("So 9 + 9 = 18.\n#### 18", True)],
        [("So 9 + 9 = 18.\n#### 18", True), ("\n<tool>99</tool>", False)],
    ]
    responses, masks = [], []
    for segments in turns:
        encoded = [(tokenizer.encode(text, add_special_tokens=False), by_policy) for text, by_policy in segments]
        responses.append([token for ids, _ in encoded for token in ids])
        masks.append([int(by_policy) for ids, by_policy in encoded for _ in ids])
    prompt = tokenizer.encode("What is 9 + 9?", add_special_tokens=False)
    data = batch_for(shared_engine(), [prompt, prompt], responses)
    holed = torch.nested.as_nested_tensor([torch.tensor(mask) for mask in masks], layout=torch.jagged)
    data["response_mask"], data["loss_mask"] = holed, holed.clone()
    gsm8k_fields(data, "18")
    stored, rewards, metrics, _ = run_reward_step(monkeypatch, data, fused_actor=False)  # the quicker path on CPU

    digit_rows = digit_rows_in_place(stored["digit_log_probs"], stored)  # NaN rows at non-digit tokens
    targets = stored["ntl_targets"].unbind()
    for sample, (ids, mask, rows) in enumerate(zip(responses, masks, digit_rows)):
        generated = torch.tensor(mask, dtype=torch.bool)
        generated_ids = torch.tensor(ids)[generated]
        scored = generated & torch.isin(torch.tensor(ids), torch.tensor(DIGIT_IDS))
        expected = compute_score(
            "openai/gsm8k", tokenizer.decode(generated_ids), "18", tau=TAU,
            ntl_info={"digit_log_probs": rows[scored], "response_ids": torch.tensor(ids)[scored],
                      "digit_ids": torch.tensor(DIGIT_IDS)},
        )
        assert expected["exact_match"] == 1 and expected["ntl_status"] == "ok"
        assert rewards[sample, len(ids) - 1].item() == pytest.approx(expected["score"], abs=1e-6)
        assert rewards[sample].sum().item() == pytest.approx(expected["score"], abs=1e-6)
        assert torch.all(targets[sample][~generated] == -100)
        assert targets[sample][generated].tolist() == [
            DIGIT_IDS.index(t) if t in DIGIT_IDS else -100 for t in generated_ids.tolist()
        ]
    assert metrics["reward/exact_match"] == 1.0


class SavingWorkers:
    """What ``PPOTrainerSeparateAsync._compute_old_log_prob`` calls on the actor's workers around the pass."""

    def __getattr__(self, name):
        return lambda *args: None


@pytest.mark.parametrize("trainer_class", [NTLPPOTrainer, NTLPPOTrainerColocateAsync, NTLPPOTrainerSeparateAsync])
@pytest.mark.parametrize("response_rows_only", ["auto", True, False])
def test_every_stage_that_scores_responses_carries_the_response_rows_setting(monkeypatch, response_rows_only,
                                                                             trainer_class):
    """In every NTL trainer mode, the actor update, old_log_prob and the reference policy see
    ``ntl.response_rows_only``; only the actor's stages see the NTL request; neither stays in ``extra_info`` for later
    stages; the NTL reward is recomputed after old_log_prob; and the base trainer runs verl's schedule."""
    seen = {}

    def stage(name):
        def run(self, batch, metrics):
            seen[name] = dict(batch.extra_info)
            return batch
        return run

    for name in ("_compute_old_log_prob", "_compute_ref_log_prob", "_update_actor"):
        monkeypatch.setattr(trainer_base.PPOTrainer, name, stage(name))
    rewarded = []
    monkeypatch.setattr(trainer_class, "_apply_ntl_reward", lambda self, batch, metrics: rewarded.append(batch) or batch)
    trainer = object.__new__(trainer_class)
    config = ntl_config("auto")
    config.ntl.response_rows_only = response_rows_only
    trainer.config, trainer.local_trigger_step, trainer.actor_rollout_wg = config, 1, SavingWorkers()
    trainer.configure_ntl(config)
    trainer.trainer_mode = trainer_class.ntl_mode  # what verl's PPOTrainer.__init__ assigns
    assert trainer.trainer_mode == NTL_SCHEDULES[trainer_class.ntl_mode]
    assert trainer_mode_class(trainer_class.ntl_mode) is trainer_class
    trainer.ntl_request = trainer.make_ntl_request(qwen2_5_tokenizer())
    batch = KVBatchMeta(keys=["k"], tags=[{}], partition_id="train", extra_info={})
    for name in ("_compute_old_log_prob", "_compute_ref_log_prob", "_update_actor"):
        getattr(trainer, name)(batch, metrics={})
        assert seen[name]["ntl_response_rows_only"] == response_rows_only
        assert ("ntl_request" in seen[name]) == (name != "_compute_ref_log_prob")
        assert batch.extra_info == {}
    assert rewarded == [batch]
