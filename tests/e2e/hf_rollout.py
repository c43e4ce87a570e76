"""A test rollout backend, ``actor_rollout_ref.rollout.name=hf``: Hugging Face ``generate`` on the CPU.

verl 0.7.1 to 0.9.1 register only vLLM, SGLang and TensorRT-LLM rollouts (all GPU-only). A backend is three pieces,
and ``tests/e2e/cpu_harness.py`` registers these in verl's two registries (the same API on all four releases;
the legacy workers of 0.7.1 call ``update_weights`` without ``global_steps``, with ``peft_config`` and
``base_sync_done``):

- ``HFReplica`` (trainer side, ``RolloutReplicaRegistry``): starts one ``HFRolloutServer`` Ray actor per replica;
- ``HFRolloutServer``: holds a copy of the policy and answers the agent loop's ``generate(prompt_ids, ...)``;
- ``HFServerAdapter`` (in each hybrid actor worker, ``_ROLLOUT_REGISTRY``): receives the actor's weights after every
  update (verl's "naive" checkpoint engine) and loads them into its replica's server.

A random tiny model never writes digits or ``#### <answer>``, so NTL would have nothing to score. The server
therefore generates a *scripted* response (``ResponseScript``, from the dataset's worked solutions): Hugging Face
``generate`` runs the policy token by token but may only pick the script's next token; the policy's own
log-probabilities of those tokens are returned as the rollout log-probs. Which solution a request gets is
deterministic per question (see ``ResponseScript``), so a run with 1 or 2 data-parallel ranks generates the same
responses.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

SCRIPT_ENV = "NTL_E2E_ROLLOUT_SCRIPT"  # path of the ResponseScript JSON, set in every Ray process's environment


def server_name(replica_rank: int) -> str:
    """The named Ray actor of a replica's server (the adapter in the actor worker looks it up by name)."""
    return f"hf_rollout_server_{replica_rank}"


class ResponseScript:
    """The responses of the test backend: for each question, the solutions it answers with, in turn.

    ``solutions[question]`` lists the responses (e.g. a correct and a wrong worked solution); the k-th request whose
    prompt contains ``question`` gets ``solutions[question][k % len]``. With ``rollout.n`` = the list length every
    prompt's group holds each solution once, whatever order the requests arrive in (as long as one server answers
    all of them).
    """

    def __init__(self, solutions: dict[str, list[str]]):
        if not solutions or any(not answers for answers in solutions.values()):
            raise ValueError("solutions must map each question to a non-empty list of responses")
        self.solutions = solutions
        self.requests = Counter()

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.solutions, indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ResponseScript:
        return cls(json.loads(Path(path).read_text()))

    def next_response(self, prompt: str) -> str:
        """The response for the next request with this prompt text. Raises KeyError for an unknown prompt."""
        matches = [question for question in self.solutions if question in prompt]
        if len(matches) != 1:
            raise KeyError(f"the rollout script has {len(matches)} questions in this prompt (want 1): {prompt!r}")
        question = matches[0]
        answers = self.solutions[question]
        response = answers[self.requests[question] % len(answers)]
        self.requests[question] += 1
        return response


class HFRolloutServer:
    """One replica's server: the policy as a Hugging Face model on the CPU, generating scripted responses."""

    def __init__(self, model_path: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, torch_dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
        self.script = ResponseScript.load(os.environ[SCRIPT_ENV])
        self.global_steps = None  # the training step of the loaded weights (verl's metrics read it per response)

    def load_weights(self, weights: dict[str, torch.Tensor], global_steps: int | None) -> None:
        """Load the actor's weights (Hugging Face names); a tied LM head may be absent, nothing else may differ."""
        result = self.model.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        if result.unexpected_keys or set(result.missing_keys) - tied:
            raise ValueError(
                f"actor weights do not match the rollout model: missing {sorted(set(result.missing_keys) - tied)}, "
                f"unexpected {sorted(result.unexpected_keys)}"
            )
        self.global_steps = global_steps

    async def generate(self, prompt_ids: list[int], sampling_params: dict, request_id: str, **unused) -> TokenOutput:
        """The scripted response for this prompt, generated by the policy under the constraint, with log-probs."""
        response = self.script.next_response(self.tokenizer.decode(prompt_ids))
        script = self.tokenizer.encode(response, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        script = script[: sampling_params.get("max_tokens", len(script))]
        prompt = torch.tensor([prompt_ids])
        with torch.no_grad():
            output = self.model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=len(script),
                do_sample=False,
                prefix_allowed_tokens_fn=lambda _, ids: [script[ids.shape[-1] - prompt.shape[1]]],
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        token_ids = output.sequences[0, prompt.shape[1]:].tolist()
        log_probs = None
        if sampling_params.get("logprobs"):
            temperature = sampling_params.get("temperature") or 1.0
            logits = torch.cat(output.logits).float() / temperature  # [response, V]
            log_probs = logits.log_softmax(-1).gather(1, torch.tensor(token_ids)[:, None])[:, 0].tolist()
        return TokenOutput(token_ids=token_ids, log_probs=log_probs, stop_reason="completed",
                           extra_fields={"global_steps": self.global_steps})

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Nothing to restore: the model stays in memory."""

    async def sleep(self) -> None:
        """Nothing to free."""

    async def abort_all_requests(self, reject_request: bool = False) -> None:
        """The async trainer modes pause generation here; each ``generate`` call runs to its end without yielding,
        so no request is in flight to cut short (no partial rollout)."""

    async def resume_generation(self) -> None:
        """Nothing was paused (see ``abort_all_requests``)."""


class HFReplica(RolloutReplica):
    """A replica served by one ``HFRolloutServer`` actor (no GPU, no HTTP: the agent loop calls it through Ray)."""

    async def launch_servers(self):
        name = server_name(self.replica_rank)
        server = ray.remote(HFRolloutServer).options(
            name=name, num_cpus=0, max_concurrency=self.max_concurrency
        ).remote(self.model_config.path)  # the test model is a local folder
        self.servers = [server]
        self._server_handle = server
        self._server_address = name  # the load balancer's key for this server; nothing connects to it


class HFServerAdapter(BaseRollout):
    """The rollout end inside a hybrid actor worker: forwards the actor's weights to its replica's server."""

    def __init__(self, config, model_config, device_mesh):
        super().__init__(config, model_config, device_mesh)
        rollout_world_size = (
            self.config.tensor_model_parallel_size * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        rank = int(os.environ["RANK"])  # consecutive ranks form a replica, as verl's LLMServerManager assigns them
        self.replica_rank = rank // rollout_world_size
        self.owns_server = rank % rollout_world_size == 0

    async def resume(self, tags: list[str]):
        """Nothing to restore: the server keeps its model."""

    async def release(self):
        """Nothing to free."""

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps=None, **kwargs):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf test rollout takes full named tensors, not {wire_format!r}")
        # every rank walks the generator: gathering each FSDP shard into a full tensor is a collective
        full = {name: tensor.detach().to("cpu", torch.float32).clone() for name, tensor in weights}
        if self.owns_server:
            await ray.get_actor(server_name(self.replica_rank)).load_weights.remote(full, global_steps)
