"""Logits-sized buffers of one micro-batch of verl's legacy actor (verl <= 0.7.x, ``DataParallelPPOActor``): verl's
own actor with NTL off against ``NTLDataParallelPPOActor`` with NTL on, on verl's passes + a digit pass and on one
fused pass.

    TRITON_INTERPRET=1 python -m bench.bench_legacy_actor                      # CPU, real verl 0.7.x actor
    TRITON_INTERPRET=1 python -m bench.bench_legacy_actor --shapes gsm8k --padded

Counted as ``bench.bench_engine`` counts them (its ``count_buffers``: every fresh storage of at least one vocabulary
row that an aten op returns, in units of the ``[rows, V]`` float32 logits of the micro-batch's model rows), around
``update_policy`` (``train``: one mini-batch of one micro-batch: forward, verl's PPO loss + ``ntl.loss_coef = 1``,
backward, SGD step) and ``compute_log_prob`` with entropy (``infer``, as verl computes ``old_log_prob``). The model
is a random tiny Qwen2 (hidden 32, 2 layers) with Qwen2.5's 151,936-token vocabulary, float32 (CPU autocast off);
the batch is one of ``bench_engine.SHAPES`` (random tokens, a fifth of the responses digits). verl 0.7.x's
remove-padding helpers need flash-attn, so the CPU run uses the test bridge ``tests.bridges``' plain-torch ones.
Run it with ``TRITON_INTERPRET=1`` so that the single pass runs the Triton kernels (their allocations are what is
counted).
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench.bench_engine import SHAPES, VOCAB_SIZE, count_buffers
from ntl_kernels import QWEN2_5_DIGIT_IDS, digit_targets

CONFIGURATIONS = {  # name: (NTL actor?, fused_actor of the request or None for no request)
    "verl_ntl_off": (False, None),
    "ntl_verl_passes": (True, False),
    "ntl_single_pass": (True, True),
}


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def random_batch(shape: list[tuple[int, int]], seed: int = 0):
    """verl's padded RL batch for ``(prompt, response)`` lengths, responses a fifth digits, with advantages and
    ``ntl_targets``."""
    from tests.legacy_cpu import padded_batch, training_batch

    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(100, VOCAB_SIZE, (p,), generator=generator).tolist() for p, _ in shape]
    responses = []
    for _, r in shape:
        tokens = torch.randint(100, VOCAB_SIZE, (r,), generator=generator)
        is_digit = torch.rand(r, generator=generator) < 0.2
        tokens[is_digit] = torch.tensor(QWEN2_5_DIGIT_IDS)[torch.randint(0, 10, (int(is_digit.sum()),),
                                                                         generator=generator)]
        responses.append(tokens.tolist())
    data = padded_batch(prompts, responses, micro_batch_size=len(shape), temperature=1.0, use_dynamic_bsz=False)
    targets = digit_targets(data.batch["responses"], torch.tensor(QWEN2_5_DIGIT_IDS))
    targets = torch.where(data.batch["response_mask"].bool(), targets, -100)
    advantages = torch.randn(data.batch["responses"].shape, generator=generator)
    return data, training_batch(data, advantages, ntl_targets=targets)


def measure(shape_name: str, use_remove_padding: bool) -> list[dict]:
    from verl.workers.actor.dp_actor import DataParallelPPOActor

    from tests.bridges import bridge_flash_attn_padding
    from tests.legacy_cpu import actor_config
    from verl_integration.inprocess import start_single_process_group
    from verl_integration.legacy_actor import NTLDataParallelPPOActor
    from verl_integration.request import NTL_REQUEST_KEY, NTLRequest

    start_single_process_group("gloo")
    bridge_flash_attn_padding()
    shape = SHAPES[shape_name]
    model = tiny_qwen2()
    infer_data, train_data = random_batch(shape)
    attention = infer_data.batch["attention_mask"]
    rows = int(attention.sum()) if use_remove_padding else attention.numel()
    results = []
    for name, (ntl_actor, fused_actor) in CONFIGURATIONS.items():
        module = copy.deepcopy(model)
        actor = (NTLDataParallelPPOActor if ntl_actor else DataParallelPPOActor)(
            config=actor_config(use_remove_padding=use_remove_padding, ppo_mini_batch_size=len(shape),
                                ppo_micro_batch_size_per_gpu=len(shape)),
            actor_module=module, actor_optimizer=torch.optim.SGD(module.parameters(), lr=1e-3))
        infer, train = copy.copy(infer_data), copy.copy(train_data)
        infer.meta_info, train.meta_info = dict(infer.meta_info), dict(train.meta_info)
        if fused_actor is not None:
            request = NTLRequest(digit_ids=QWEN2_5_DIGIT_IDS, loss_coef=1.0, fused_actor=fused_actor).as_dict()
            infer.meta_info[NTL_REQUEST_KEY] = train.meta_info[NTL_REQUEST_KEY] = request
        for step_name, step in (("infer", lambda: actor.compute_log_prob(infer, calculate_entropy=True)),
                                ("train", lambda: actor.update_policy(train))):
            counted = count_buffers(step, rows=rows, element_size=4)
            results.append({"shape": shape_name, "layout": "remove_padding" if use_remove_padding else "padded",
                            "rows": rows, "configuration": name, "step": step_name, **counted})
    return results


def table(results: list[dict]) -> list[str]:
    lines = ["| shape | layout | rows | configuration | step | logits-sized buffers | by op |",
             "|---|---|---|---|---|---|---|"]
    for row in results:
        by_op = ", ".join(f"{op} {units}" for op, units in row["by_op"].items())
        lines.append(f"| {row['shape']} | {row['layout']} | {row['rows']} | {row['configuration']} | {row['step']} "
                     f"| {row['logits_sized_buffers']} | {by_op} |")
    return lines


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["short_prompt"], choices=sorted(SHAPES))
    parser.add_argument("--padded", action="store_true", help="verl's padded layout (default: remove-padding)")
    args = parser.parse_args(argv)
    results = [row for shape in args.shapes for row in measure(shape, use_remove_padding=not args.padded)]
    print("\n".join(table(results)))
    return results


if __name__ == "__main__":
    main()
