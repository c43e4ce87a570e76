"""The actor engine's LM-head rows and FLOPs, logits-sized buffers and micro-batch time: verl's engine, NTL off,
NTL on verl's passes, NTL on one pass; each on every packed row (verl) or on the response rows only.

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
fsdp2, fp32, a tiny Qwen2 with Qwen2.5's 151,936-token vocabulary), one micro-batch of each shape of ``SHAPES``
(by default GSM8K-like, prompt 120 / response 250, and multi-turn-like, prompt 2,000 / response 200 scaled to
500 / 50; ``short_prompt`` is the 252-row batch measured before), each configuration of ``CPU_CONFIGURATIONS``
(``*_rows_only``: ``ntl.response_rows_only`` on; ``--configurations``, default ``DEFAULT_CONFIGURATIONS``);
``train`` = one ``forward_backward_batch`` with verl's ``ppo_loss`` (+ ``ntl.loss_coef = 1``), no optimizer step
(``train_entropy``, with ``--entropy-bonus``: with an entropy bonus, ``entropy_coeff = 0.01``); ``infer`` = one
``infer_batch`` as verl's old_log_prob runs it (entropy on, no gradient; the reference policy's pass is ``infer``
without entropy).
Measured: the rows the LM head multiplied (a hook on it), their LM-head GFLOPs at Qwen2.5-0.5B's width (d = 896;
forward 2 rows d V, training 3 times that) and the logits-sized buffers in units of the logits of *every* packed
row (so that the response-only configurations' savings show). Run it with
``TRITON_INTERPRET=1`` so that the single pass runs the Triton kernels (their allocations are what is counted; without
it the op falls back to its plain-torch reference). Times are not measured on CPU (interpreter).

CUDA (``--device cuda``): verl is not needed (GPU check machines have none). A Qwen2.5-0.5B-shaped Qwen2 (random
weights, bf16, sdpa) runs one packed micro-batch of ~4,096 tokens per shape of ``CUDA_SHAPES`` (the previous
batch, GSM8K-like, multi-turn-like); its logits go through what each configuration's engine does with them (verl's
``logprobs_from_logits``/``entropy_from_logits`` when verl imports, else the local equivalents of
``bench.bench_actor.verl_logprob_entropy_path``; ``digits.digit_statistics``; the single-pass call), on every row
or, for ``*_rows_only``, with the hidden states cut to the scored rows before the LM head. Measured: model forward +
head + backward time (``triton.testing.do_bench`` median), peak memory beyond the step's start, and the buffer
count. Writes ``engine_{cpu,cuda,smoke}.{json,md}`` into ``--out``.
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


# (prompt tokens, response tokens) of each packed sample; the CPU engine runs one micro-batch of them
SHAPES = {
    "short_prompt": [(18, 40), (19, 42), (20, 44), (21, 48)],  # the batch measured before: 252 rows, 31% prompt
    "gsm8k": [(120, 250)],  # GSM8K with verl's prompt template, a 0.5B model's response
    "multi_turn": [(500, 50)],  # multi-turn / tool calling: prompt 2,000 / response 200, scaled by 1/4 to fit a CPU
}
# engine class ("verl": verl's FSDPEngineWithLMHead, else NTLFSDPEngine), NTL request's fused_actor (None: no
# request), ntl.response_rows_only
CPU_CONFIGURATIONS = {
    "verl": ("verl", None, False),
    "ntl_off_rows_only": ("ntl", None, True),  # NTL off (the reference policy, plain batches) under the plug-in
    "ntl_verl_passes": ("ntl", False, False),
    "ntl_single_pass": ("ntl", True, False),  # the NTL actor before response_rows_only
    "ntl_single_pass_rows_only": ("ntl", True, True),  # the default: fused_actor=auto, response_rows_only=auto
}
# LM-head FLOPs are reported for Qwen2.5-0.5B (d = 896), from the rows the tiny engine's LM head multiplied:
# 2 rows d V forward; training adds the backward's two products (gradient of the hidden states and of the weight).
QWEN2_5_0_5B_HIDDEN = 896


def _cpu_batch(engine, configuration: str, shape: str, *, train: bool, seed: int = 0):
    """The samples of ``SHAPES[shape]``, a third of their tokens digits; returns (batch, packed rows, scored rows)."""
    from verl.utils import tensordict_utils as tu

    from verl_integration.inprocess import engine_settings, make_batch
    from verl_integration.request import NTL_TARGETS_KEY, RESPONSE_ROWS_KEY, NTLRequest

    _, fused_actor, rows_only = CPU_CONFIGURATIONS[configuration]
    generator = torch.Generator().manual_seed(seed)
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS)

    def tokens(length):
        ids = torch.randint(100, 150000, (length,), generator=generator)
        is_digit = torch.rand(length, generator=generator) < 0.33
        return torch.where(is_digit, digit_ids[torch.randint(0, 10, (length,), generator=generator)], ids).tolist()

    prompts = [tokens(p) for p, _ in SHAPES[shape]]
    responses = [tokens(r) for _, r in SHAPES[shape]]
    count, width = len(responses), max(map(len, responses))
    padded = torch.tensor([r + [0] * (width - len(r)) for r in responses])
    fields = {}
    if train:
        fields = {
            "old_log_probs": -torch.rand(count, width, generator=generator) - 5.0,
            "advantages": torch.randn(count, width, generator=generator),
        }
        if fused_actor is not None:
            fields[NTL_TARGETS_KEY] = digit_targets(padded, digit_ids)
    settings = {**engine_settings(engine), "micro_batch_size_per_gpu": count}  # the batch is one micro-batch
    batch = make_batch(prompts, responses, temperature=1.0, settings=settings, **fields)
    tu.assign_non_tensor(batch, **{RESPONSE_ROWS_KEY: rows_only})
    if train:
        tu.assign_non_tensor(batch, global_batch_size=count)
    else:
        tu.assign_non_tensor(batch, calculate_entropy=True)  # as verl's old_log_prob pass asks
    if fused_actor is not None:
        NTLRequest(digit_ids=QWEN2_5_DIGIT_IDS, loss_coef=1.0, loss_method=LOSS_METHOD,
                   fused_actor=fused_actor).attach(batch)
    return batch, sum(p + r for p, r in SHAPES[shape]), sum(r for _, r in SHAPES[shape])


def count_buffers_and_lm_head_rows(engine, step, *, rows: int) -> dict:
    """``count_buffers`` of one ``step()`` of the fp32 CPU engine, and the rows its LM head multiplied in it (a
    forward hook on the output embedding)."""
    multiplied = []
    handle = engine.module.get_output_embeddings().register_forward_hook(
        lambda module, args, output: multiplied.append(args[0].numel() // args[0].shape[-1]))
    try:
        counted = count_buffers(step, rows=rows, element_size=4)
    finally:
        handle.remove()
    return {"lm_head_rows": sum(multiplied), **counted}


DEFAULT_SHAPES = ("gsm8k", "multi_turn")
DEFAULT_CONFIGURATIONS = ("verl", "ntl_off_rows_only", "ntl_single_pass", "ntl_single_pass_rows_only")


def cpu_counts(shapes=DEFAULT_SHAPES, configurations=DEFAULT_CONFIGURATIONS, entropy_bonus=False) -> list[dict]:
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from tests.verl_cpu import tiny_model_dir
    from verl_integration.inprocess import actor_loss, build_engine

    rows = []
    engines = {}  # one engine per class: the configurations differ only in the batch's request and settings
    for configuration in configurations:
        engine_kind = CPU_CONFIGURATIONS[configuration][0]
        if engine_kind not in engines:
            engine_cls = FSDPEngineWithLMHead if engine_kind == "verl" else None
            engines[engine_kind] = build_engine(tiny_model_dir(), engine_cls=engine_cls, micro_batch_size=4)
        engine = engines[engine_kind]
        for shape in shapes:
            for stage in ("train", "train_entropy", "infer") if entropy_bonus else ("train", "infer"):
                batch, num_rows, num_scored = _cpu_batch(engine, configuration, shape, train=stage != "infer")
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
                counted = count_buffers_and_lm_head_rows(engine, step, rows=num_rows)
                products = 1 if stage == "infer" else 3
                flops = products * 2 * counted["lm_head_rows"] * QWEN2_5_0_5B_HIDDEN * VOCAB_SIZE
                rows.append({"shape": shape, "configuration": configuration, "stage": stage, "rows": num_rows,
                             "scored_rows": num_scored, "lm_head_gflops_0.5b": round(flops / 1e9, 1), **counted})
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


# (samples, prompt tokens, response tokens) packed into one micro-batch on CUDA, ~4,096 rows each
CUDA_SHAPES = {
    "short_prompt": (8, 170, 342),  # the previous measurement's batch: a third of each sample prompt
    "gsm8k": (11, 120, 250),
    "multi_turn": (2, 2000, 200),
}
CUDA_CONFIGURATIONS = CONFIGURATIONS + ("ntl_off_rows_only", "ntl_single_pass_rows_only")


def model_measurements(device: torch.device, shape: str, batch_shape: tuple[int, int, int]) -> list[dict]:
    """Each of ``CUDA_CONFIGURATIONS`` on one packed micro-batch of ``batch_shape`` = (samples, prompt, response);
    the ``*_rows_only`` ones run the LM head and the passes over its logits on the scored rows only, as
    ``NTLFSDPEngine`` does with ``ntl.response_rows_only`` (``ntl_off_rows_only``: verl's passes, as for the
    reference policy)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.bench_actor import verl_logprob_entropy_path
    from verl_integration.digits import digit_statistics
    from verl_integration.engine import scored_rows

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB_SIZE, tie_word_embeddings=True, max_position_embeddings=32768,
                         attn_implementation="sdpa", **MODEL_SHAPES[shape])
    with device:  # initialised where it runs: a CPU initialisation of 0.5B parameters alone takes ~10 s
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    samples, prompt, response = batch_shape
    length = prompt + response
    input_ids = torch.randint(100, 150000, (1, length * samples), device=device)
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS, device=device)
    is_digit = torch.rand(input_ids.shape, device=device) < 0.33
    input_ids = torch.where(is_digit, digit_ids[torch.randint(0, 10, input_ids.shape, device=device)], input_ids)
    position_ids = torch.arange(length, device=device).repeat(samples).unsqueeze(0)  # packed samples
    labels = torch.roll(input_ids, -1, dims=1).squeeze(0)  # verl's labels: row t scores token t + 1
    scored = scored_rows(torch.full((samples,), length, device=device), torch.full((samples,), response,
                                                                                    device=device))
    targets = torch.where(scored, digit_targets(labels, digit_ids), -100)  # prompt rows have no target
    advantages = torch.randn(labels.shape, device=device)
    temperature = torch.ones(labels.shape, device=device)  # verl's default rollout temperature
    kept = scored.nonzero().squeeze(1)
    baseline, verl_log_probs, verl_entropy, _ = verl_logprob_entropy_path()

    def head(configuration: str, logits: torch.Tensor, with_entropy: bool, rows):
        """(log_probs, entropy or None, ntl or None) as each configuration's engine computes them on ``rows``."""
        if configuration.startswith("ntl_single_pass"):
            out = fused_logprob_entropy_ntl(logits, labels[rows], digit_ids, temperature=temperature[rows],
                                            ntl_targets=targets[rows], method=LOSS_METHOD, inplace_backward=True)
            return out.log_probs, out.entropy if with_entropy else None, out.ntl
        log_probs = verl_log_probs(logits, labels[rows])
        entropy = verl_entropy(logits) if with_entropy else None
        ntl = None
        if configuration == "ntl_verl_passes":
            ntl = digit_statistics(logits, digit_ids, temperature=temperature[rows], ntl_targets=targets[rows],
                                   method=LOSS_METHOD).ntl
        return log_probs, entropy, ntl

    def logits_of(configuration):
        """The LM head's logits and the rows they are of: every row, or the scored ones (hidden states cut)."""
        if not configuration.endswith("rows_only"):
            return model(input_ids=input_ids, position_ids=position_ids).logits.squeeze(0), slice(None)
        hidden = model.model(input_ids=input_ids, position_ids=position_ids).last_hidden_state.squeeze(0)
        return model.lm_head(hidden.index_select(0, kept)), kept

    def train_step(configuration):
        logits, rows = logits_of(configuration)
        log_probs, _, ntl = head(configuration, logits, with_entropy=False, rows=rows)
        loss = -(advantages[rows] * log_probs.float()).mean()
        if ntl is not None:
            loss = loss + ntl.mean()
        loss.backward()

    def infer_step(configuration):
        with torch.no_grad():
            logits, rows = logits_of(configuration)
            head(configuration, logits, with_entropy=True, rows=rows)

    parameters = list(model.parameters())
    rows = []
    for configuration in CUDA_CONFIGURATIONS:
        for stage, step in (("train", train_step), ("infer", infer_step)):
            call = functools.partial(step, configuration)
            row = {"shape": f"{samples}x({prompt}+{response})", "configuration": configuration, "stage": stage,
                   "rows": labels.numel(), "scored_rows": int(kept.numel()), "baseline": baseline}
            row["ms"] = median_ms(call, device.type, cpu_repeats=1, grad_to_none=parameters)
            row["peak_extra_mb"] = peak_extra_mb(call, device.type, grad_to_none=parameters)
            for p in parameters:
                p.grad = None
            row.update(count_buffers(call, rows=labels.numel(), element_size=2))
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    return rows


SUMMARY_COLUMNS = {  # configuration -> column of the before/after summary
    "verl": "verl's engine",
    "ntl_single_pass": "NTL before (single pass, every row)",
    "ntl_single_pass_rows_only": "NTL now (single pass, response rows)",
    "ntl_off_rows_only": "NTL off / reference, response rows",
}


def summary(rows: list[dict]) -> list[str]:
    """Per shape and stage: LM-head rows / LM-head GFLOPs at d = 896 / logits-sized buffers, per configuration."""
    present = [c for c in SUMMARY_COLUMNS if any(row["configuration"] == c for row in rows)]
    lines = ["LM-head rows / LM-head GFLOPs (Qwen2.5-0.5B, d = 896) / logits-sized buffers (units: logits of every "
             "packed row) per micro-batch:", "",
             "| shape | stage | rows (scored) | " + " | ".join(SUMMARY_COLUMNS[c] for c in present) + " |",
             "|---|---|---|" + "---|" * len(present)]
    cases = list(dict.fromkeys((row["shape"], row["stage"]) for row in rows))
    for shape, stage in cases:
        by_configuration = {row["configuration"]: row for row in rows if (row["shape"], row["stage"]) == (shape, stage)}
        first = next(iter(by_configuration.values()))
        cells = []
        for configuration in present:
            row = by_configuration.get(configuration)
            cells.append("-" if row is None else
                         f"{row['lm_head_rows']} / {row['lm_head_gflops_0.5b']:g} / {row['logits_sized_buffers']:g}")
        lines.append(f"| {shape} | {stage} | {first['rows']} ({first['scored_rows']}) | " + " | ".join(cells) + " |")
    return lines


def _report(rows: list[dict], name: str, out: Path) -> None:
    table = [{key: value for key, value in row.items() if key != "by_op"} for row in rows]
    notes = [*(summary(rows) + [""] if name == "engine_cpu" else []),
        "logits_sized_buffers: fresh storages of >= one vocabulary row created by the step, in units of the "
        "[rows, V] logits (see bench/bench_engine.py). Largest contributors per row:",
        "",
        *(f"- {row.get('shape', '')} / {row['configuration']} / {row['stage']}: "
          + ", ".join(f"{op} {units:.2f}" for op, units in list(row["by_op"].items())[:6]) for row in rows),
    ]
    if name == "engine_cpu":
        notes += ["", "CPU: real verl 0.9.1 FSDPEngineWithLMHead / NTLFSDPEngine (fsdp2, fp32, tiny Qwen2, V = 151,936), "
                  "one micro-batch; train = forward_backward_batch with ppo_loss (+ 1.0 x NTL, method was), infer = "
                  "infer_batch with entropy (old_log_prob). Triton kernels under TRITON_INTERPRET=1. No times on CPU. "
                  "lm_head_rows: rows the LM head multiplied (train: the forward's); lm_head_gflops_0.5b: their "
                  "LM-head FLOPs at d = 896 (train: forward + backward); logits_sized_buffers in units of the logits "
                  "of every packed row (rows x V), also for the response-only configurations. The multi_turn shape is "
                  "prompt 2,000 / response 200 scaled by 1/4 (same prompt share) to fit a CPU.",
                  "", "Shapes tagged (96e1393) are that commit's measurement (before ntl.response_rows_only: every "
                  "configuration's LM head ran on every row; lm_head_rows = rows), carried into the report with "
                  "--render. Where 'NTL before' shows '-', its LM head ran on every row (verl's column's rows and "
                  "GFLOPs) and its buffers are the logits themselves plus the LM-head weight's gradient (1.76 train / "
                  "1.0 infer at short_prompt); it was not re-measured at these shapes: the Triton interpreter needs "
                  "more than 15 minutes per step at 550 rows on the loaded 2-core machine of this run."]
    env = environment("cuda" if name == "engine_cuda" else "cpu")
    if name == "engine_smoke":
        notes += ["", "Smoke run (tiny model, 64 rows, CPU, Triton interpreter): checks the code path; times mean nothing."]
    write_report(out, name, env, table, notes)
    (out / f"{name}.json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), choices=list(SHAPES),
                        help="CPU: batch shapes")
    parser.add_argument("--configurations", nargs="+", default=list(DEFAULT_CONFIGURATIONS),
                        choices=list(CPU_CONFIGURATIONS), help="CPU: engine configurations")
    parser.add_argument("--entropy-bonus", action="store_true", help="CPU: also the train stage with entropy_coeff")
    parser.add_argument("--render", type=Path, metavar="LOG",
                        help="CPU: write the report from the JSON lines a run printed (one per measured row; a run "
                             "cut short keeps what it measured), without measuring")
    parser.add_argument("--smoke", action="store_true",
                        help="the CUDA measurement's code on the CPU, tiny model, 64 rows: checks the code path only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU")
    if args.device == "cpu" and not args.render and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("on CPU set TRITON_INTERPRET=1, so that the single pass runs (and counts) the Triton kernels")
    if args.render:
        rows = [json.loads(line) for line in args.render.read_text().splitlines() if line.startswith("{")]
        name = "engine_cpu"
    elif args.smoke:
        rows = model_measurements(torch.device("cpu"), "smoke", (4, 6, 10))
        name = "engine_smoke"
    elif args.device == "cuda":
        rows = [row for batch_shape in CUDA_SHAPES.values()
                for row in model_measurements(torch.device("cuda"), "qwen2.5-0.5b", batch_shape)]
        name = "engine_cuda"
    else:
        rows = cpu_counts(tuple(args.shapes), tuple(args.configurations), args.entropy_bonus)
        name = "engine_cpu"
    _report(rows, name, args.out)
    return rows


if __name__ == "__main__":
    main()
