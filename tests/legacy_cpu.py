"""Test helpers for verl's legacy actor (verl <= 0.7.x) on CPU: a tiny Qwen2 in memory, verl's
``DataParallelPPOActor`` and ours on copies of it, and the padded DataProto batches verl's legacy workers hand them.

verl 0.7.1 runs its legacy actor on CPU as it is (``get_device_name()`` is "cpu" without an accelerator); it only needs
a process group (the actor asks for its rank): a one-process gloo group, as the 0.9 tests use. The actor runs on the
plain Hugging Face module (verl's ``_optimizer_step`` takes modules that are not FSDP-wrapped); ``fsdp_config.dtype``
float32 leaves CPU autocast off, so both actors compute in float32. verl 0.7.1's remove-padding helpers need
flash-attn: ``tests/bridges.py`` (applied by tests/conftest.py) bridges them.
"""

from __future__ import annotations

import copy
import functools

import torch
from verl import DataProto
from verl.workers.actor.dp_actor import DataParallelPPOActor
from verl.workers.config import FSDPActorConfig, FSDPEngineConfig

from verl_integration.inprocess import start_single_process_group

VOCAB_SIZE = 4096  # holds the digits (15..24) and the 2-digit tokens (2000..2099); small for the interpreter
PAD = 0


@functools.lru_cache(maxsize=1)
def tiny_model():
    """A random tiny Qwen2 (hidden 32, 2 layers, seed 0, float32, sdpa attention); copy it before training."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    start_single_process_group("gloo")
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def actor_config(**options) -> FSDPActorConfig:
    """verl's FSDP actor config for one mini-batch of 4 samples in micro-batches of 2 (gradient accumulation 2),
    float32, no gradient clipping in effect."""
    settings = dict(strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, rollout_n=1,
                    grad_clip=1e9, use_torch_compile=False, fsdp_config=FSDPEngineConfig(dtype="float32"))
    settings.update(options)
    return FSDPActorConfig(**settings)


def new_actor(actor_cls=DataParallelPPOActor, **options):
    """``actor_cls`` on a fresh copy of ``tiny_model()`` with plain SGD (lr 1: a step subtracts the gradient)."""
    module = copy.deepcopy(tiny_model())
    return actor_cls(config=actor_config(**options), actor_module=module,
                     actor_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))


def padded_batch(prompts, responses, **meta_info) -> DataProto:
    """verl's padded RL batch: prompts left-padded, responses right-padded, ``position_ids`` counting the attended
    tokens, ``response_mask`` = the responses' attention; ``meta_info`` as given."""
    prompt_width = max(map(len, prompts))
    response_width = max(map(len, responses))
    input_ids, attention_mask = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        left, right = prompt_width - len(prompt), response_width - len(response)
        input_ids.append([PAD] * left + prompt + response + [PAD] * right)
        attention_mask.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
    input_ids, attention_mask = torch.tensor(input_ids), torch.tensor(attention_mask)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
               "responses": input_ids[:, prompt_width:], "response_mask": attention_mask[:, prompt_width:]}
    return DataProto.from_dict(tensors=tensors, meta_info=meta_info)


def training_batch(batch: DataProto, advantages: torch.Tensor, **fields) -> DataProto:
    """``batch`` with what ``update_policy`` reads: ``advantages`` [B, R], ``old_log_probs`` (unused on policy: one
    mini-batch, one epoch) and ``fields`` ([B, R] tensors such as ``ntl_targets``)."""
    batch = copy.copy(batch)
    batch.batch = batch.batch.clone()
    batch.meta_info = dict(batch.meta_info)
    batch.batch["advantages"] = advantages
    batch.batch["old_log_probs"] = torch.zeros_like(advantages)
    for key, value in fields.items():
        batch.batch[key] = value
    return batch


def parameters(module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}
