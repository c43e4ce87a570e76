"""NTLFSDPEngine under Ulysses sequence parallelism (2 ranks, gloo, CPU): every rank scores its slice of the packed
stream, and the digit outputs are all-gathered and unpadded with verl's own gather, like its log-probs.

verl 0.9.1's Ulysses attention is its patch of flash-attention's varlen forward, which cannot run on a CPU: with sdpa
each rank here attends within its own slice only, so the logits differ from an unsharded run. What is tested is what
NTL adds, which does not depend on the attention: the targets sliced like verl's labels, the per-row digit outputs and
NTL gathered back into verl's packed order (the planted distribution lands on the right rows, prompt digits never
count), also from hidden states with verl's fused LM head, and the single pass equal to verl's passes on the same
sharded logits, outputs and gradients.
"""

import os
import tempfile
import traceback

import torch
import torch.multiprocessing

from tests.verl_cpu import tiny_model_dir

SP_SIZE = 2


def run_rank(rank: int, rendezvous: str, model_dir: str, results: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=SP_SIZE)
    try:
        from verl.workers.engine.fsdp import transformer_impl

        from tests import test_verl_engine as engine_tests
        from tests.verl_cpu import batch_for, infer, new_engine, plant_digit_hidden
        from verl_integration.inprocess import use_cpu_platform

        use_cpu_platform()
        # verl 0.9.1 reads the device name for the Ulysses mesh at import time, before a CPU platform can exist.
        transformer_impl.device_name = "cpu"
        options = {"model_dir": model_dir, "ulysses_sequence_parallel_size": SP_SIZE, "micro_batch_size": 2}
        engine = new_engine(**options)
        fused_head = new_engine(use_fused_kernels=True, **options)
        assert engine.use_ulysses_sp and fused_head.use_ulysses_sp

        def planted_output(engine, plant, fused_actor, temperature):
            batch = engine_tests.request(fused_actor).attach(batch_for(
                engine, engine_tests.PROMPTS, engine_tests.RESPONSES, temperature=temperature,
                **{engine_tests.NTL_TARGETS_KEY: engine_tests.padded_targets(engine_tests.RESPONSES)},
            ))
            handle = plant(engine, engine_tests.PLANTED)
            try:
                return infer(engine, batch), batch
            finally:
                handle.remove()

        for fused_actor in (True, False):
            engine_tests.check_planted_distribution(
                *planted_output(engine, plant_digit_hidden, fused_actor, engine_tests.TEMPERATURES))
        engine_tests.check_planted_distribution(  # verl's fused LM head: one temperature per batch
            *planted_output(fused_head, plant_digit_hidden, "auto", 1.5), temperatures=torch.tensor([1.5, 1.5]))

        prompts = [[101, 15, 16], [102], [103, 17], [104]]
        responses = [[18, 220, 19], [20, 21], [22, 220, 23, 24], [15, 16]]
        loss = engine_tests.actor_loss(entropy_coeff=0.01)
        results_by_path = {}
        for fused_actor in (True, False):
            ntl_request = engine_tests.request(fused_actor, loss_coef=1.0, loss_method="was")
            batch = engine_tests.training_batch(engine, ntl_request, prompts, responses)
            results_by_path[fused_actor] = engine_tests.zero_grad_forward_backward(engine, batch, loss)
        (single, single_grads), (verl, verl_grads) = results_by_path[True], results_by_path[False]
        for key in ("log_probs", "entropy", "digit_log_probs", "ntl"):
            torch.testing.assert_close(single["model_output"][key].values(), verl["model_output"][key].values(),
                                       rtol=1e-6, atol=1e-5)
        assert any(g.abs().max() > 0 for g in verl_grads)
        for mine, theirs in zip(single_grads, verl_grads, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-7)
        outcome = "ok"
    except BaseException:  # reported to the test process through the results file
        outcome = traceback.format_exc()
    with open(f"{results}.{rank}", "w") as handle:
        handle.write(outcome)
    torch.distributed.destroy_process_group()


def test_ulysses_sequence_parallel_digit_outputs_are_gathered_like_log_probs():
    model_dir = tiny_model_dir()
    scratch = tempfile.mkdtemp(prefix="ntl_ulysses_")
    rendezvous, results = os.path.join(scratch, "rendezvous"), os.path.join(scratch, "result")
    torch.multiprocessing.spawn(run_rank, args=(rendezvous, model_dir, results), nprocs=SP_SIZE, join=True)
    for rank in range(SP_SIZE):
        with open(f"{results}.{rank}") as handle:
            outcome = handle.read()
        assert outcome == "ok", f"rank {rank}:\n{outcome}"
