"""The actor engine's logits-sized buffers and micro-batch time: NTL off, NTL on verl's passes, NTL on one pass.

    TRITON_INTERPRET=1 python -m bench.bench_engine --out bench/results     # CPU: count buffers, real verl engine
    python -m bench.bench_engine --device cuda --out OUTDIR                  # CUDA: time + buffers + peak memory
    TRITON_INTERPRET=1 python -m bench.bench_engine --smoke --out /tmp/x     # the CUDA measurement's code, tiny, CPU

Three actor configurations, each on the same batch:
  * ``ntl_off``: verl's ``FSDPEngineWithLMHead`` as verl runs it (no NTL request);
  * ``ntl_verl_passes``: ``NTLFSDPEngine`` with ``ntl.fused_actor=false``: verl's log-prob (and entropy) passes, then
    the 10 digit columns through ``digits.digit_statistics``;
  * ``ntl_single_pass``: ``NTLFSDPEngine`` with the default ``ntl.fused_actor=auto``: one ``fused_logprob_entropy_ntl``
    call, gradient written in place over the logits.

A *logits-sized buffer* is a fresh storage of at least one vocabulary row (V x 4 bytes for the fp32 logits of the
CPU engine, V x 2 for bf16) that an aten op returns (a storage none of the op's inputs has: views and in-place
results do not count), counted by a ``TorchDispatchMode`` around the step; the count is their bytes over the bytes of
the ``[rows, V]`` logits. LM-head-weight-sized buffers (``[V, d]``, the weight's gradient) count too, as d / rows.

CPU (``--device cpu``, the default): the real verl 0.9.1 engine in this process (``verl_integration.inprocess``,
fsdp2, fp32, a tiny Qwen2 with Qwen2.5's 151,936-token vocabulary), 4 responses packed into about 250 rows, one
micro-batch; ``train`` = one ``forward_backward_batch`` with verl's ``ppo_loss`` (+ ``ntl.loss_coef = 1``), no
optimizer step (``train_entropy``: with an entropy bonus, ``entropy_coeff = 0.01``); ``infer`` = one ``infer_batch``
as verl's old_log_prob runs it (entropy on, no gradient). Run it with
``TRITON_INTERPRET=1`` so that the single pass runs the Triton kernels (their allocations are what is counted; without
it the op falls back to its plain-torch reference). Times are not measured on CPU (interpreter).

CUDA (``--device cuda``): verl is not needed (GPU check machines have none). A Qwen2.5-0.5B-shaped Qwen2 (random
weights, bf16, sdpa) runs one packed micro-batch (``--rows`` tokens); its logits go through what each configuration's
engine does with them (verl's ``logprobs_from_logits``/``entropy_from_logits`` when verl imports, else the local
equivalents of ``bench.bench_actor.verl_logprob_entropy_path``; ``digits.digit_statistics``; the single-pass call). Measured: model
forward + head + backward time (``triton.testing.do_bench`` median), peak memory beyond the step's start, and the
buffer count. Sized for ``bench/gpu_check.sh``'s 40 s step. Writes ``engine_{cpu,cuda,smoke}.{json,md}`` into
``--out``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.common import environment, median_ms, peak_extra_mb, write_report
from ntl_kernels import QWEN2_5_DIGIT_IDS, digit_targets, fused_logprob_entropy_ntl

CONFIGURATIONS = ("ntl_off", "ntl_verl_passes", "ntl_single_pass")
VOCAB_SIZE = 151936
LOSS_METHOD = "was"


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The dense tensor holding a DTensor's (FSDP2 parameters and gradients) or a nested tensor's data."""
    if hasattr(tensor, "_local_tensor"):
        return tensor._local_tensor
    if tensor.is_nested:
        return tensor._values
    return tensor


class LogitsSizedBuffers(TorchDispatchMode):
    """Records every fresh storage of at least ``min_bytes`` that an aten op returns: ``records`` = [(op, bytes)]."""

    def __init__(self, min_bytes: int):
        super().__init__()
        self.min_bytes = min_bytes
        self.records: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        inputs = {
            _plain(t).untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for tensor in tree_leaves(output):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = _plain(tensor).untyped_storage()
            if storage.nbytes() >= self.min_bytes and storage.data_ptr() not in inputs:
                inputs.add(storage.data_ptr())  # a storage returned twice by one op is one buffer
                self.records.append((func.__name__, storage.nbytes()))
        return output

    def in_logits(self, logits_bytes: int) -> tuple[float, dict[str, float]]:
        """Total and per-op bytes of the recorded buffers, in units of the logits' bytes."""
        per_op = collections.defaultdict(float)
        for op, nbytes in self.records:
            per_op[op] += nbytes / logits_bytes
        return sum(per_op.values()), dict(sorted(per_op.items(), key=lambda item: -item[1]))


def count_buffers(step, *, rows: int, element_size: int) -> dict:
    """Run ``step()`` once under the counter; the logits are ``[rows, VOCAB_SIZE]`` of ``element_size`` bytes."""
    counter = LogitsSizedBuffers(min_bytes=VOCAB_SIZE * element_size)
    with counter:
        step()
    total, per_op = counter.in_logits(rows * VOCAB_SIZE * element_size)
    return {"logits_sized_buffers": round(total, 2), "by_op": {op: round(units, 3) for op, units in per_op.items()}}


# ---------------------------------------------------------------------------------------------------------------
# CPU: the real verl engine


def _cpu_batch(engine, configuration: str, *, train: bool, seed: int = 0):
    """4 responses of 40-48 tokens after 18-21-token prompts (~250 packed rows), a third of them digits."""
    from verl.utils import tensordict_utils as tu

    from verl_integration.inprocess import engine_settings, make_batch
    from verl_integration.request import NTL_TARGETS_KEY, NTLRequest

    generator = torch.Generator().manual_seed(seed)
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS)

    def tokens(length):
        ids = torch.randint(100, 150000, (length,), generator=generator)
        is_digit = torch.rand(length, generator=generator) < 0.33
        return torch.where(is_digit, digit_ids[torch.randint(0, 10, (length,), generator=generator)], ids).tolist()

    prompts = [tokens(18 + i) for i in range(4)]
    responses = [tokens(40 + 2 * i + (i == 3) * 2) for i in range(4)]
    width = max(map(len, responses))
    padded = torch.tensor([r + [0] * (width - len(r)) for r in responses])
    fields = {}
    if train:
        fields = {
            "old_log_probs": -torch.rand(4, width, generator=generator) - 5.0,
            "advantages": torch.randn(4, width, generator=generator),
        }
        if configuration != "ntl_off":
            fields[NTL_TARGETS_KEY] = digit_targets(padded, digit_ids)
    batch = make_batch(prompts, responses, temperature=1.0, settings=engine_settings(engine), **fields)
    if train:
        tu.assign_non_tensor(batch, global_batch_size=4)
    else:
        tu.assign_non_tensor(batch, calculate_entropy=True)  # as verl's old_log_prob pass asks
    if configuration != "ntl_off":
        NTLRequest(digit_ids=QWEN2_5_DIGIT_IDS, loss_coef=1.0, loss_method=LOSS_METHOD,
                   fused_actor=configuration == "ntl_single_pass").attach(batch)
    return batch, sum(len(p) + len(r) for p, r in zip(prompts, responses))


def cpu_counts() -> list[dict]:
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from tests.verl_cpu import tiny_model_dir
    from verl_integration.inprocess import actor_loss, build_engine

    rows = []
    for configuration in CONFIGURATIONS:
        engine_cls = FSDPEngineWithLMHead if configuration == "ntl_off" else None
        engine = build_engine(tiny_model_dir(), engine_cls=engine_cls, micro_batch_size=4)
        for stage in ("train", "train_entropy", "infer"):
            batch, num_rows = _cpu_batch(engine, configuration, train=stage != "infer")
            if stage != "infer":
                loss = actor_loss(entropy_coeff=0.01 if stage == "train_entropy" else 0.0)
                if stage == "train_entropy":
                    tu.assign_non_tensor(batch, calculate_entropy=True)

                def step():
                    with engine.train_mode():
                        engine.forward_backward_batch(batch, loss, forward_only=False)
            else:
                def step():
                    with engine.eval_mode():
                        engine.infer_batch(batch)
            counted = count_buffers(step, rows=num_rows, element_size=4)
            rows.append({"configuration": configuration, "stage": stage, "rows": num_rows, **counted})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# A model and what each engine does with its logits, without verl: CUDA (or --smoke on the CPU)


MODEL_SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2),
    "smoke": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
}


def model_measurements(device: torch.device, shape: str, num_rows: int, samples: int) -> list[dict]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.bench_actor import verl_logprob_entropy_path
    from verl_integration.digits import digit_statistics

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB_SIZE, tie_word_embeddings=True, max_position_embeddings=32768,
                         attn_implementation="sdpa", **MODEL_SHAPES[shape])
    with device:  # initialised where it runs: a CPU initialisation of 0.5B parameters alone takes ~10 s
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    length = num_rows // samples
    input_ids = torch.randint(100, 150000, (1, length * samples), device=device)
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS, device=device)
    is_digit = torch.rand(input_ids.shape, device=device) < 0.33
    input_ids = torch.where(is_digit, digit_ids[torch.randint(0, 10, input_ids.shape, device=device)], input_ids)
    position_ids = torch.arange(length, device=device).repeat(samples).unsqueeze(0)  # packed samples
    labels = torch.roll(input_ids, -1, dims=1).squeeze(0)  # verl's labels: row t scores token t + 1
    targets = digit_targets(labels, digit_ids)
    targets.view(samples, length)[:, : length // 3] = -100  # prompt rows have no target
    advantages = torch.randn(labels.shape, device=device)
    temperature = torch.ones(labels.shape, device=device)  # verl's default rollout temperature
    baseline, verl_log_probs, verl_entropy, _ = verl_logprob_entropy_path()

    def head(configuration: str, logits: torch.Tensor, with_entropy: bool):
        """(log_probs, entropy or None, ntl or None) as each configuration's engine computes them."""
        if configuration == "ntl_single_pass":
            out = fused_logprob_entropy_ntl(logits, labels, digit_ids, temperature=temperature, ntl_targets=targets,
                                            method=LOSS_METHOD, inplace_backward=True)
            return out.log_probs, out.entropy if with_entropy else None, out.ntl
        log_probs = verl_log_probs(logits, labels)
        entropy = verl_entropy(logits) if with_entropy else None
        ntl = None
        if configuration == "ntl_verl_passes":
            ntl = digit_statistics(logits, digit_ids, temperature=temperature, ntl_targets=targets,
                                   method=LOSS_METHOD).ntl
        return log_probs, entropy, ntl

    def train_step(configuration):
        logits = model(input_ids=input_ids, position_ids=position_ids).logits.squeeze(0)
        log_probs, _, ntl = head(configuration, logits, with_entropy=False)
        loss = -(advantages * log_probs.float()).mean()
        if ntl is not None:
            loss = loss + ntl.mean()
        loss.backward()

    def infer_step(configuration):
        with torch.no_grad():
            logits = model(input_ids=input_ids, position_ids=position_ids).logits.squeeze(0)
            head(configuration, logits, with_entropy=True)

    parameters = list(model.parameters())
    rows = []
    for configuration in CONFIGURATIONS:
        for stage, step in (("train", train_step), ("infer", infer_step)):
            call = functools.partial(step, configuration)
            row = {"configuration": configuration, "stage": stage, "rows": labels.numel(), "baseline": baseline}
            row["ms"] = median_ms(call, device.type, cpu_repeats=1, grad_to_none=parameters)
            row["peak_extra_mb"] = peak_extra_mb(call, device.type, grad_to_none=parameters)
            for p in parameters:
                p.grad = None
            row.update(count_buffers(call, rows=labels.numel(), element_size=2))
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _report(rows: list[dict], name: str, out: Path) -> None:
    table = [{key: value for key, value in row.items() if key != "by_op"} for row in rows]
    notes = [
        "logits_sized_buffers: fresh storages of >= one vocabulary row created by the step, in units of the "
        "[rows, V] logits (see bench/bench_engine.py). Largest contributors per row:",
        "",
        *(f"- {row['configuration']} / {row['stage']}: "
          + ", ".join(f"{op} {units:.2f}" for op, units in list(row["by_op"].items())[:6]) for row in rows),
    ]
    if name == "engine_cpu":
        notes += ["", "CPU: real verl 0.9.1 FSDPEngineWithLMHead / NTLFSDPEngine (fsdp2, fp32, tiny Qwen2, V = 151,936), "
                  "one micro-batch; train = forward_backward_batch with ppo_loss (+ 1.0 x NTL, method was), infer = "
                  "infer_batch with entropy (old_log_prob). Triton kernels under TRITON_INTERPRET=1. No times on CPU."]
    env = environment("cuda" if name == "engine_cuda" else "cpu")
    if name == "engine_smoke":
        notes += ["", "Smoke run (tiny model, 64 rows, CPU, Triton interpreter): checks the code path; times mean nothing."]
    write_report(out, name, env, table, notes)
    (out / f"{name}.json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--rows", type=int, default=4096, help="CUDA: packed tokens in the micro-batch")
    parser.add_argument("--samples", type=int, default=8, help="CUDA: samples packed into them")
    parser.add_argument("--smoke", action="store_true",
                        help="the CUDA measurement's code on the CPU, tiny model, 64 rows: checks the code path only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("on CPU set TRITON_INTERPRET=1, so that the single pass runs (and counts) the Triton kernels")
    if args.smoke:
        rows = model_measurements(torch.device("cpu"), "smoke", num_rows=64, samples=4)
        name = "engine_smoke"
    elif args.device == "cuda":
        rows = model_measurements(torch.device("cuda"), "qwen2.5-0.5b", args.rows, args.samples)
        name = "engine_cuda"
    else:
        rows = cpu_counts()
        name = "engine_cpu"
    _report(rows, name, args.out)
    return rows


if __name__ == "__main__":
    main()
