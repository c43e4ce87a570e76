"""verl 0.9.1's real ``main_ppo`` on a machine without a GPU, for the end-to-end tests (test code only).

Imported in every process of the run (driver, TaskRunner, workers, rollout and reward actors) through
``VERL_USE_EXTERNAL_MODULES=tests.e2e.cpu_harness``, i.e. inside ``import verl``, before verl picks its platform.
It selects a CPU platform, applies the bridges below for what verl 0.9.1 lacks on the CPU, registers the test
rollout backend ``hf`` (``tests/e2e/hf_rollout.py``) and then imports the NTL plug-in, exactly as a real run's
``VERL_USE_EXTERNAL_MODULES=verl_integration.plugin`` would.

What needs no code is in the run's overrides (``tests/e2e/run.py``: ``trainer.device=cpu``, fake GPUs for Ray,
fsdp2 instead of the scripts' FSDP1, sdpa attention for the actor, ``VERL_ENGINE_DEVICE=cuda``).
"""

from __future__ import annotations

import functools

import psutil
import torch
import verl  # partially initialised here (we run inside its __init__); __version__ is already set

from verl_integration.inprocess import cpu_platform_class, select_cpu_platform

BRIDGED_VERL_VERSION = "0.9.1"
ROLLOUT_NAME = "hf"  # actor_rollout_ref.rollout.name of the test backend (tests/e2e/hf_rollout.py)


def bridge(gap: str):
    """Mark a function as the bridge for ``gap`` in verl ``BRIDGED_VERL_VERSION``; on another verl it refuses to run,
    so every bridge is re-checked (and removed where verl has closed the gap) when verl is upgraded."""

    def decorate(apply):
        @functools.wraps(apply)
        def checked():
            if verl.__version__ != BRIDGED_VERL_VERSION:
                raise RuntimeError(
                    f"tests/e2e/cpu_harness.{apply.__name__} bridges verl {BRIDGED_VERL_VERSION} ({gap}); "
                    f"re-check it for verl {verl.__version__}"
                )
            apply()

        return checked

    return decorate


class CPUDeviceModule:
    """``torch.cpu`` plus what verl reads from every device module: allocator statistics (0 on the CPU; free/total
    memory from the operating system) and the device name."""

    def __getattr__(self, name):
        return getattr(torch.cpu, name)

    @staticmethod
    def memory_allocated(device=None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def get_device_name(device=None) -> str:
        return "CPU"  # what verl's flops counter calls torch.cpu


@bridge("no CPU platform; memory_utils.py, profiler/performance.py, engine_workers.py read CUDA allocator statistics")
def use_cpu_platform_in_ray():
    class RayCPUPlatform(cpu_platform_class()):
        device_module = property(lambda self: CPUDeviceModule())

    select_cpu_platform(RayCPUPlatform)


@bridge("utils/distributed.py initialize_global_process_group_ray builds the backend 'cpu:gloo,cpu:gloo' (rejected)")
def gloo_process_groups():
    from verl.utils import distributed

    original = distributed.initialize_global_process_group_ray

    def initialize_gloo_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    distributed.initialize_global_process_group_ray = initialize_gloo_process_group_ray


@bridge("utils/model.py load_valuehead_model hard-codes attn_implementation='flash_attention_2' for the critic")
def sdpa_for_the_critic():
    from transformers import AutoModelForTokenClassification

    original = AutoModelForTokenClassification.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        if kwargs.get("attn_implementation") == "flash_attention_2":
            kwargs["attn_implementation"] = "sdpa"
        return original(cls, *args, **kwargs)

    AutoModelForTokenClassification.from_pretrained = classmethod(from_pretrained)


@bridge("workers/engine/fsdp/transformer_impl.py gives the reference model CPUOffloadPolicy(pin_memory=True)")
def unpinned_offload_for_the_reference():
    from torch.distributed.fsdp import CPUOffloadPolicy
    from verl.workers.engine.fsdp import transformer_impl

    class UnpinnedCPUOffloadPolicy(CPUOffloadPolicy):
        """Pinned memory needs an accelerator."""

        def __init__(self, pin_memory: bool = True):
            super().__init__(pin_memory=False)

    transformer_impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


@bridge("workers/rollout: only vllm/sglang/trtllm are registered, all GPU-only")
def register_hf_rollout():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def load_replica():
        from tests.e2e.hf_rollout import HFReplica  # not at import: hf_rollout imports verl, which imports us

        return HFReplica

    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "tests.e2e.hf_rollout.HFServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica)


use_cpu_platform_in_ray()
gloo_process_groups()
sdpa_for_the_critic()
unpinned_offload_for_the_reference()
register_hf_rollout()

import verl_integration.plugin  # noqa: E402,F401  (what a real run names in VERL_USE_EXTERNAL_MODULES)
