"""Run the NTL engine in this process, without Ray: for tests and the demo, on the CPU or one GPU.

verl 0.9.1 has no CPU platform: ``use_cpu_platform()`` registers one (``cpu_platform_class()``: a CUDA platform
subclass whose device is "cpu", collectives on gloo, cache/synchronize no-ops), makes it verl's current platform
(``select_cpu_platform()``) and starts a one-process gloo group. On a GPU verl's own CUDA platform is used with a
one-process NCCL group. Either way the process becomes a world of one rank, so never mix the two in one process.

``build_engine(model_path, device=...)`` builds and initialises an engine (fsdp2, fp32, sdpa attention) from a
Hugging Face model directory; ``make_batch(prompts, responses)`` builds the TensorDict verl's workers hand to the
engine; ``actor_loss()`` builds verl's actor loss (``partial(ppo_loss, config=ActorConfig)``) as the worker does.
"""

from __future__ import annotations

import functools
import os
import tempfile

import torch
from tensordict import TensorDict


@functools.lru_cache(maxsize=1)
def cpu_platform_class():
    """verl's platform class for the CPU (verl 0.9.1 has none), built on first use so importing this module does not
    import verl: a CUDA platform subclass whose device is "cpu", collectives on gloo, nothing to cache or synchronise.
    """
    from verl.plugin.platform.platform_cuda import PlatformCUDA

    class PlatformCPU(PlatformCUDA):
        """CPU as a verl platform: torch.cpu device module, gloo collectives, nothing to cache or synchronise."""

        device_name = property(lambda self: "cpu")
        vendor_name = property(lambda self: "cpu")
        device_module = property(lambda self: torch.cpu)

        def is_available(self) -> bool:
            return True

        def current_device(self):
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index) -> None:
            return None

        def synchronize(self, device_index=None) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def communication_backend_name(self) -> str:
            return "gloo"

    return PlatformCPU


def select_cpu_platform(platform_cls=None) -> None:
    """Register ``platform_cls`` (default ``cpu_platform_class()``, or a subclass of it) as verl's "cpu" platform and
    make it verl's current platform (idempotent). Starts no process group. Before verl 0.9 there is no platform
    registry and nothing to do: ``verl.utils.device`` picks the CPU where CUDA is absent."""
    from .releases import verl_line

    if not verl_line().PLATFORM_REGISTRY:
        return
    from verl.plugin.platform import platform_manager

    platform_cls = platform_cls or cpu_platform_class()
    if not isinstance(platform_manager._current_platform, platform_cls):
        platform_manager.PlatformRegistry.register("cpu")(platform_cls)
        platform_manager.set_platform(platform_cls())


def use_cpu_platform() -> None:
    """Register and select verl's CPU platform and start a single-process gloo group (idempotent)."""
    select_cpu_platform()
    start_single_process_group("gloo")


def start_single_process_group(backend: str) -> None:
    """A world of one rank (idempotent). It rendezvous through a fresh temporary file, so no network port is taken
    (several test processes and the demo can run at once)."""
    if not torch.distributed.is_initialized():
        rendezvous = os.path.join(tempfile.mkdtemp(prefix="verl_inprocess_"), "rendezvous")
        torch.distributed.init_process_group(backend, init_method=f"file://{rendezvous}", rank=0, world_size=1)


def build_engine(
    model_path: str,
    *,
    device: str = "cpu",
    engine_cls=None,
    use_remove_padding: bool = True,
    use_dynamic_bsz: bool = False,
    micro_batch_size: int = 2,
    max_token_len: int = 4096,
    lr: float = 1e-3,
    total_training_steps: int = 100,
    use_fused_kernels: bool = False,
    **engine_options,
):
    """An initialised verl FSDP language-model engine in this process (fp32, sdpa attention).

    Args:
        model_path: a directory with a Hugging Face causal LM and its tokenizer.
        device: "cpu" (verl's CPU platform, registered here) or "cuda" (verl's CUDA platform on the current GPU).
        engine_cls: the engine class (default ``NTLFSDPEngine``; pass verl's ``FSDPEngineWithLMHead`` for a
            plain-verl baseline).
        use_remove_padding, use_dynamic_bsz, micro_batch_size, max_token_len: verl's micro-batching settings,
            copied into every batch by ``make_batch``'s caller through ``engine_settings``.
        use_fused_kernels: verl's fused LM head (``actor_rollout_ref.model.use_fused_kernels``) with verl's default
            ``impl_backend: torch``, which also runs on the CPU.
        engine_options: further ``FSDPEngineConfig`` fields (``pad_to_length``, ``pad_to_length_bucket``,
            ``ulysses_sequence_parallel_size``, ...).
    """
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig

    if engine_cls is None:
        from .engine import NTLFSDPEngine

        engine_cls = NTLFSDPEngine
    if device == "cpu":
        use_cpu_platform()
    elif device == "cuda":
        start_single_process_group("nccl")
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    model_config = HFModelConfig(
        path=model_path,
        override_config={"attn_implementation": "sdpa"},
        use_remove_padding=use_remove_padding,
        enable_gradient_checkpointing=False,
        use_fused_kernels=use_fused_kernels,
        fused_kernel_options={"impl_backend": "torch"},
    )
    engine_config = FSDPEngineConfig(
        strategy="fsdp2",
        use_torch_compile=False,
        model_dtype="fp32",
        mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        use_dynamic_bsz=use_dynamic_bsz,
        micro_batch_size_per_gpu=micro_batch_size,
        max_token_len_per_gpu=max_token_len,
        **engine_options,
    )
    optimizer_config = FSDPOptimizerConfig(lr=lr, total_training_steps=total_training_steps, weight_decay=0.0)
    engine = engine_cls(
        model_config=model_config,
        engine_config=engine_config,
        optimizer_config=optimizer_config,
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine


def engine_settings(engine) -> dict:
    """The per-batch settings verl's ``TrainingWorker`` injects into every batch from the engine's config."""
    return {
        "use_remove_padding": engine.use_remove_padding,
        "use_dynamic_bsz": engine.engine_config.use_dynamic_bsz,
        "max_token_len_per_gpu": engine.engine_config.max_token_len_per_gpu,
        "micro_batch_size_per_gpu": engine.engine_config.micro_batch_size_per_gpu,
        "use_fused_kernels": engine.model_config.use_fused_kernels,
    }


def make_batch(
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    temperature: float | torch.Tensor = 1.0,
    settings: dict | None = None,
    **fields: torch.Tensor,
) -> TensorDict:
    """A batch in the layout verl's workers give the engine (nested, no padding).

    Args:
        prompts, responses: token ids of each sample (every prompt non-empty).
        temperature: one float, or a ``[B]`` tensor of per-sample temperatures.
        settings: non-tensor settings (``engine_settings(engine)``).
        fields: extra per-response tensors, each ``[B, max_response]`` padded (e.g. ``old_log_probs``,
            ``advantages``, ``ntl_targets``); they are stored nested like ``responses``.
    Returns:
        TensorDict with nested ``input_ids``, ``position_ids``, ``prompts``, ``responses``, ``response_mask``,
        ``loss_mask`` and the extra fields, plus non-tensor ``temperature`` and ``settings``.
    """
    from verl.utils import tensordict_utils as tu

    if len(prompts) != len(responses) or not prompts:
        raise ValueError("prompts and responses must be equally long, non-empty lists of token id lists")

    def nested(rows, dtype=torch.long):
        return torch.nested.as_nested_tensor([torch.tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)

    sequences = [p + r for p, r in zip(prompts, responses, strict=True)]
    response_lengths = [len(r) for r in responses]
    data = {
        "input_ids": nested(sequences),
        "position_ids": nested([list(range(len(s))) for s in sequences]),
        "prompts": nested(prompts),
        "responses": nested(responses),
        "response_mask": nested([[1] * n for n in response_lengths]),
        "loss_mask": nested([[1] * n for n in response_lengths]),
    }
    for name, padded in fields.items():
        data[name] = torch.nested.as_nested_tensor(
            [padded[i, :n] for i, n in enumerate(response_lengths)], layout=torch.jagged
        )
    if isinstance(temperature, torch.Tensor):
        data["temperature"] = temperature.float()  # per sample: a batch field, split with the micro-batches
    batch = TensorDict(data, batch_size=[len(prompts)])
    if not isinstance(temperature, torch.Tensor):
        tu.assign_non_tensor(batch, temperature=float(temperature))
    tu.assign_non_tensor(batch, **(settings or {}))
    return batch


def actor_loss(**actor_options):
    """verl's actor loss as its worker builds it: ``partial(ppo_loss, config=ActorConfig(...))``."""
    from verl.workers.config import FSDPActorConfig
    from verl.workers.utils.losses import ppo_loss

    options = {"strategy": "fsdp2", "rollout_n": 1, "ppo_mini_batch_size": 1, "use_dynamic_bsz": True}
    options.update(actor_options)
    return functools.partial(ppo_loss, config=FSDPActorConfig(**options))
