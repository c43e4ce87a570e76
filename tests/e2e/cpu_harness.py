"""verl's real ``main_ppo`` on a machine without a GPU, for the end-to-end tests and the verl matrix (test code only).

Imported in every process of the run (driver, TaskRunner, workers, rollout and reward actors) through
``VERL_USE_EXTERNAL_MODULES=tests.e2e.cpu_harness``, i.e. inside ``import verl``, before verl picks its platform.
It applies the bridges below that the running verl release needs on the CPU (each bridge names its gap and the
releases it bridges, ``bridged_releases()``; any other release is refused, so every bridge is re-checked), one of
which registers the test rollout backend ``hf`` (``tests/e2e/hf_rollout.py``), and then imports the NTL plug-in,
exactly as a real run's ``VERL_USE_EXTERNAL_MODULES=verl_integration.plugin`` would (not in a plain-verl run:
``PLAIN_ENV=1``).

What needs no code is in the run's overrides (``tests/e2e/run.py``: ``trainer.device=cpu``, fake GPUs for Ray,
fsdp2 instead of the scripts' FSDP1, sdpa attention for the actor; per release ``release_overrides``: a Ray
resource named ``cpu`` before 0.9, ``VERL_ENGINE_DEVICE=cuda`` on 0.9).
"""

from __future__ import annotations

import os

import psutil
import torch
from torch.distributed.fsdp import CPUOffloadPolicy
import verl  # partially initialised here (we run inside its __init__); __version__ is already set

from tests.bridges import bridge_flash_attn_padding
from tests.e2e import PLAIN_ENV
from verl_integration.inprocess import cpu_platform_class, select_cpu_platform

ROLLOUT_NAME = "hf"  # actor_rollout_ref.rollout.name of the test backend (tests/e2e/hf_rollout.py)
V09 = {"0.9.0", "0.9.1"}
BEFORE_V09 = {"0.8.0", "0.7.1"}
BRIDGES = []  # (apply, gap, releases) in the order they are applied


def bridge(gap: str, releases: set[str]):
    """Mark a function as the bridge for ``gap`` in the verl ``releases`` it is applied on (and only there), so every
    bridge is re-checked (and removed where verl has closed the gap) when a release is added."""

    def register(apply):
        BRIDGES.append((apply, gap, frozenset(releases)))
        return apply

    return register


def bridged_releases() -> frozenset[str]:
    return frozenset().union(*(releases for _, _, releases in BRIDGES))


def apply_bridges(version: str) -> None:
    """Apply every bridge for verl ``version``; RuntimeError for a release no bridge was checked against."""
    if version not in bridged_releases():
        raise RuntimeError(f"tests/e2e/cpu_harness bridges verl {', '.join(sorted(bridged_releases()))}; "
                           f"re-check each bridge for verl {version}")
    for apply, _, releases in BRIDGES:
        if version in releases:
            apply()


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


@bridge("no CPU platform; memory_utils.py, profiler/performance.py, engine_workers.py read CUDA allocator statistics",
        V09)
def use_cpu_platform_in_ray():
    class RayCPUPlatform(cpu_platform_class()):
        device_module = property(lambda self: CPUDeviceModule())

    select_cpu_platform(RayCPUPlatform)


@bridge("utils/distributed.py initialize_global_process_group_ray builds the backend 'cpu:gloo,cpu:gloo' (rejected)",
        V09 | BEFORE_V09)
def gloo_process_groups():
    from verl.utils import distributed

    original = distributed.initialize_global_process_group_ray

    def initialize_gloo_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    distributed.initialize_global_process_group_ray = initialize_gloo_process_group_ray


@bridge("workers/fsdp_workers.py (legacy workers) starts its process groups on 'cpu:gloo,cpu:nccl' (actor, rejected) "
        "and 'nccl' (critic)", {"0.7.1"})
def gloo_process_groups_for_the_legacy_workers():
    original = torch.distributed.init_process_group

    def init_gloo_process_group(backend=None, *args, **kwargs):
        return original("gloo", *args, **kwargs)  # every process of the run is on the CPU: gloo is the one backend

    torch.distributed.init_process_group = init_gloo_process_group


@bridge("utils/model.py load_valuehead_model hard-codes attn_implementation='flash_attention_2' for the critic",
        V09 | BEFORE_V09)
def sdpa_for_the_critic():
    from transformers import AutoModelForTokenClassification

    original = AutoModelForTokenClassification.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        if kwargs.get("attn_implementation") == "flash_attention_2":
            kwargs["attn_implementation"] = "sdpa"
        return original(cls, *args, **kwargs)

    AutoModelForTokenClassification.from_pretrained = classmethod(from_pretrained)


class UnpinnedCPUOffloadPolicy(CPUOffloadPolicy):
    """Pinned memory needs an accelerator."""

    def __init__(self, pin_memory: bool = True):
        super().__init__(pin_memory=False)


@bridge("workers/engine/fsdp/transformer_impl.py gives the reference model CPUOffloadPolicy(pin_memory=True)",
        V09 | {"0.8.0"})
def unpinned_offload_for_the_reference():
    from verl.workers.engine.fsdp import transformer_impl

    transformer_impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


@bridge("workers/fsdp_workers.py (legacy workers) gives the reference model CPUOffloadPolicy(pin_memory=True)",
        {"0.7.1"})
def unpinned_offload_for_the_legacy_reference():
    from verl.workers import fsdp_workers

    fsdp_workers.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


@bridge("utils/fsdp_utils.py apply_fsdp2 indexes model._no_split_modules, a set since transformers 5 (legacy workers)",
        {"0.7.1"})
def listed_no_split_modules_for_fsdp2():
    from verl.utils import fsdp_utils
    from verl.workers import fsdp_workers

    original = fsdp_utils.apply_fsdp2

    def apply_fsdp2(model, fsdp_kwargs, config):
        if isinstance(getattr(model, "_no_split_modules", None), set):
            model._no_split_modules = sorted(model._no_split_modules)
        return original(model, fsdp_kwargs, config)

    fsdp_utils.apply_fsdp2 = fsdp_workers.apply_fsdp2 = apply_fsdp2


@bridge("no platform registry: utils/device.py get_torch_device() is torch.cpu, which lacks the allocator statistics "
        "memory_utils.py and profiler/performance.py read", BEFORE_V09)
def allocator_statistics_on_torch_cpu():
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved",
                 "mem_get_info", "empty_cache", "get_device_name"):
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, getattr(CPUDeviceModule, name))


@bridge("utils/attention_utils.py takes its padding helpers from flash_attn.bert_padding (CUDA-only)", BEFORE_V09)
def flash_attn_padding_in_torch():
    bridge_flash_attn_padding()


@bridge("workers/engine/base.py looks engines up by utils.device.get_device_name() ('cpu' here); the FSDP engines "
        "are registered for cuda/npu only", {"0.8.0"})
def fsdp_engines_on_the_cpu():
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl  # noqa: F401  (registers the FSDP engines)

    for backend_to_devices in EngineRegistry._engines.values():
        for device_to_engine in backend_to_devices.values():
            if "cuda" in device_to_engine:
                device_to_engine.setdefault("cpu", device_to_engine["cuda"])


@bridge("workers/rollout: only vllm/sglang/trtllm are registered, all GPU-only", V09 | BEFORE_V09)
def register_hf_rollout():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def load_replica():
        from tests.e2e.hf_rollout import HFReplica  # not at import: hf_rollout imports verl, which imports us

        return HFReplica

    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "tests.e2e.hf_rollout.HFServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica)


apply_bridges(verl.__version__)

if os.environ.get(PLAIN_ENV) != "1":
    import verl_integration.plugin  # noqa: F401  (what a real run names in VERL_USE_EXTERNAL_MODULES)
