"""Benchmark of the actor's fused pass: ``fused_logprob_entropy_ntl`` against verl's unfused torch path.

    python -m bench.bench_actor --out bench/results          # CUDA, N = 16,384, V = 151,936, bf16
    TRITON_INTERPRET=1 python -m bench.bench_actor --smoke --out /tmp/actor_smoke   # CPU, tiny: the code path only

Measures (times are ``triton.testing.do_bench`` medians on CUDA; on CPU one timed call after a warm-up):
  * forward bandwidth: one read of the logits / forward time, against a device copy of the same logits measured
    in the same run (copy bandwidth counts its read and its write);
  * forward + backward of log-prob + entropy + NTL against verl 0.9.1's unfused path (``logprobs_from_logits`` +
    ``entropy_from_logits`` + the design document's torch NTL), with peak memory beyond the logits and their gradient;
    the in-place backward's time and memory;
  * NTL on vs off (forward, and forward + backward);
  * Liger-Kernel's cross-entropy forward on the same logits, when ``liger_kernel`` imports;
  * the hidden-state digit path against the LM-head matmul it replaces.
Writes ``actor_<device>_<N>x<V>_<dtype>.{json,md,png}`` into ``--out`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.bench_ntl_loss import torch_formulation
from bench.common import environment, median_ms, peak_extra_mb, pyplot, write_report
from ntl_kernels import QWEN2_5_DIGIT_IDS, digit_targets
from ntl_kernels.hidden_digits import digit_ntl_from_hidden
from ntl_kernels.logprob_entropy_ntl import fused_logprob_entropy_ntl

SIZES = {
    "full": dict(n_rows=16384, vocab_size=151936, hidden_size=896),  # Qwen2.5-0.5B's LM head
    "smoke": dict(n_rows=8, vocab_size=300, hidden_size=32),
}
TARGETS = {  # the acceptance targets
    "forward_fraction_of_copy_bandwidth": (">=", 0.85),
    "speedup_vs_verl_unfused": (">=", 3.0),
    "peak_extra_mb_beyond_logits_and_grad": ("<=", 64.0),
    "ntl_on_over_off_fwd_bwd": ("<=", 1.05),
    "ours_forward_over_liger_forward": ("<=", 1.0),
    "hidden_digits_over_lm_head": ("<", 0.02),
}


def verl_logprob_entropy_path():
    """verl 0.9.1's log-prob and entropy path: ``(description, log_probs(logits, labels), entropy(logits),
    is_gpu_path)``. verl's ``logprobs_from_logits`` uses flash-attn's Triton cross-entropy when flash-attn is
    installed (as on a GPU training machine) and otherwise a per-row log_softmax loop; only the former is the path
    verl users run, so only it counts for the speed-up target (``is_gpu_path``). Without verl, a local equivalent of
    the same two paths."""
    try:
        from flash_attn.ops.triton.cross_entropy import cross_entropy_loss
    except ImportError:
        cross_entropy_loss = None
    try:
        from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

        via = "flash-attn cross-entropy" if cross_entropy_loss else "no flash-attn: per-row log_softmax loop"
        return f"verl.utils.torch_functional ({via})", (
            lambda lg, lb: logprobs_from_logits(lg, lb, inplace_backward=False)
        ), entropy_from_logits, cross_entropy_loss is not None
    except ImportError:
        pass

    def entropy(logits):  # verl's entropy_from_logits: a full softmax, logsumexp - sum(p * logits)
        probs = torch.softmax(logits, dim=-1)
        return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)

    if cross_entropy_loss is not None:  # entropy on: verl runs it without the in-place backward
        return "local: flash-attn cross_entropy_loss + torch entropy (verl's GPU path)", (
            lambda lg, lb: -cross_entropy_loss(lg, lb, inplace_backward=False)[0]
        ), entropy, True

    def log_probs(logits, labels):  # verl's fallback for bf16: a log_softmax per row, to bound memory
        rows = [F.log_softmax(row, dim=-1).gather(-1, label.unsqueeze(-1)) for row, label in zip(logits, labels)]
        return torch.cat(rows)

    return "local: per-row log_softmax loop + torch entropy (verl without flash-attn)", log_probs, entropy, False


def _objective(log_probs, entropy, ntl, weights):
    """A PPO-like scalar: advantage-weighted log-probs, an entropy bonus, an NTL term."""
    total = -(log_probs * weights[0]).sum() - 0.01 * (entropy * weights[1]).sum()
    return total + 0.3 * (ntl * weights[2]).sum() if ntl is not None else total


def run(n_rows: int, vocab_size: int, hidden_size: int, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    # One timed call after a warm-up on CPU (a smoke run checks the code path, its times mean nothing); on CUDA
    # about 200 ms of calls, so that the slowest path (verl's) still gets a few samples.
    time_ms = functools.partial(median_ms, device=device.type, cpu_repeats=1, cuda_rep_ms=200)
    digit_ids = torch.tensor(QWEN2_5_DIGIT_IDS, device=device)
    logits = (torch.randn(n_rows, vocab_size, device=device) * 2).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab_size, (n_rows,), device=device)
    labels[::3] = digit_ids[torch.randint(0, 10, (len(labels[::3]),), device=device)]
    targets = digit_targets(labels, digit_ids)
    weights = [torch.randn(n_rows, device=device) for _ in range(3)]
    logits_bytes = logits.numel() * logits.element_size()
    results: dict = {"logits_bytes": logits_bytes}

    def ours(ntl_on, tensor=logits, inplace=False):
        out = fused_logprob_entropy_ntl(tensor, labels, digit_ids, ntl_targets=targets if ntl_on else None,
                                        inplace_backward=inplace)
        return out

    def ours_fwd_bwd(ntl_on):
        out = ours(ntl_on)
        _objective(out.log_probs, out.entropy, out.ntl, weights).backward()

    # Forward bandwidth against a copy of the same bytes.
    copy_target = torch.empty_like(logits, requires_grad=False)
    with torch.no_grad():
        results["copy_ms"] = time_ms(lambda: copy_target.copy_(logits))
        results["ours_forward_ms"] = time_ms(lambda: ours(True))
        results["ours_forward_no_ntl_ms"] = time_ms(lambda: ours(False))
    results["copy_gb_per_s"] = 2 * logits_bytes / results["copy_ms"] / 1e6
    results["ours_forward_gb_per_s"] = logits_bytes / results["ours_forward_ms"] / 1e6
    results["forward_fraction_of_copy_bandwidth"] = results["ours_forward_gb_per_s"] / results["copy_gb_per_s"]
    results["ntl_on_over_off_forward"] = results["ours_forward_ms"] / results["ours_forward_no_ntl_ms"]

    # Forward + backward, NTL on and off, and verl's unfused path.
    results["ours_fwd_bwd_ms"] = time_ms(lambda: ours_fwd_bwd(True), grad_to_none=[logits])
    results["ours_fwd_bwd_no_ntl_ms"] = time_ms(lambda: ours_fwd_bwd(False), grad_to_none=[logits])
    results["ntl_on_over_off_fwd_bwd"] = results["ours_fwd_bwd_ms"] / results["ours_fwd_bwd_no_ntl_ms"]
    grad_mb = logits_bytes / 2**20
    peak = peak_extra_mb(lambda: ours_fwd_bwd(True), device.type, grad_to_none=[logits])
    results["ours_peak_extra_mb"] = peak
    results["peak_extra_mb_beyond_logits_and_grad"] = None if peak is None else peak - grad_mb

    baseline_name, verl_log_probs, verl_entropy, is_gpu_path = verl_logprob_entropy_path()
    results["baseline"] = baseline_name

    def verl_fwd_bwd():
        log_probs, entropy = verl_log_probs(logits, labels), verl_entropy(logits)
        ntl = torch_formulation(logits, targets, digit_ids, reduction="none")
        _objective(log_probs.float(), entropy.float(), ntl, weights).backward()

    results["verl_fwd_bwd_ms"] = time_ms(verl_fwd_bwd, grad_to_none=[logits])
    peak = peak_extra_mb(verl_fwd_bwd, device.type, grad_to_none=[logits])
    results["verl_peak_extra_mb_beyond_logits_and_grad"] = None if peak is None else peak - grad_mb
    speedup = results["verl_fwd_bwd_ms"] / results["ours_fwd_bwd_ms"]
    # A per-row loop is not what verl users run: reported under its own name, never as the target's speed-up.
    results["speedup_vs_verl_unfused" if is_gpu_path else "speedup_vs_per_row_fallback"] = speedup
    logits.grad = None

    # In-place backward: the gradient overwrites the logits, so every timed call first restores them (a copy,
    # timed above and subtracted).
    buffer = logits.detach().clone().requires_grad_()

    def inplace_fwd_bwd():
        out = ours(True, tensor=buffer, inplace=True)
        _objective(out.log_probs, out.entropy, out.ntl, weights).backward()

    def restore_then_inplace():
        with torch.no_grad():
            buffer.copy_(logits)
        inplace_fwd_bwd()

    results["ours_inplace_fwd_bwd_ms"] = time_ms(restore_then_inplace, grad_to_none=[buffer]) - results["copy_ms"]
    with torch.no_grad():
        buffer.copy_(logits)
    results["ours_inplace_peak_extra_mb"] = peak_extra_mb(inplace_fwd_bwd, device.type, grad_to_none=[buffer])
    del buffer, copy_target

    # Liger-Kernel's cross-entropy forward (it may write its gradient into its input: give it its own buffer).
    try:
        import liger_kernel
        from liger_kernel.transformers import LigerCrossEntropyLoss

        liger_logits = logits.detach().clone()
        liger_loss = LigerCrossEntropyLoss(reduction="none")
        with torch.no_grad():
            results["liger_forward_ms"] = time_ms(lambda: liger_loss(liger_logits, labels))
        results["liger_version"] = getattr(liger_kernel, "__version__", "unknown")
        results["ours_forward_over_liger_forward"] = results["ours_forward_ms"] / results["liger_forward_ms"]
        del liger_logits
    except Exception as error:  # not installed, or an API this script does not know: report, do not fail
        results["liger_skipped"] = f"{type(error).__name__}: {error}"
    del logits
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Hidden-state digit path against the LM-head matmul (forward, and forward + backward).
    hidden = torch.randn(n_rows, hidden_size, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(vocab_size, hidden_size, device=device) / hidden_size**0.5).to(dtype).requires_grad_()
    with torch.no_grad():
        results["lm_head_forward_ms"] = time_ms(lambda: hidden @ weight.T)
        results["hidden_digits_forward_ms"] = time_ms(
            lambda: digit_ntl_from_hidden(hidden, weight, digit_ids, ntl_targets=targets)
        )
    upstream = (torch.randn(n_rows, vocab_size, device=device) * 1e-3).to(dtype)
    results["lm_head_fwd_bwd_ms"] = time_ms(
        lambda: (hidden @ weight.T).backward(upstream), grad_to_none=[hidden, weight]
    )
    results["hidden_digits_fwd_bwd_ms"] = time_ms(
        lambda: digit_ntl_from_hidden(hidden, weight, digit_ids, ntl_targets=targets).ntl.sum().backward(),
        grad_to_none=[hidden, weight],
    )
    results["hidden_digits_over_lm_head"] = results["hidden_digits_forward_ms"] / results["lm_head_forward_ms"]
    results["hidden_digits_over_lm_head_fwd_bwd"] = (
        results["hidden_digits_fwd_bwd_ms"] / results["lm_head_fwd_bwd_ms"]
    )
    return results


def _verdicts(results: dict, evaluate: bool) -> dict:
    """Each target's value and whether it is met (None when not measured, or not evaluated: a smoke run)."""
    verdicts = {}
    for key, (op, bound) in TARGETS.items():
        value = results.get(key)
        met = None
        if evaluate and value is not None:
            met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
        verdicts[key] = {"value": value, "target": f"{op} {bound}", "met": met}
    return verdicts


def _write(report: dict, out: Path, stem: str) -> None:
    """``stem.{json,md}``: one row per measurement, the targets first with their bound; ``stem.png``: the times."""
    results, verdicts = report["results"], report["verdicts"]
    rows = [{"measurement": key, "value": value} for key, value in report["sizes"].items()]
    rows.append({"measurement": "dtype", "value": report["dtype"]})
    rows += [{"measurement": key, **verdict} for key, verdict in verdicts.items()]
    rows += [{"measurement": key, "value": value} for key, value in results.items() if key not in verdicts]
    notes = [
        f"Baseline: {results['baseline']}. Times are triton.testing.do_bench medians on CUDA; on CPU one timed call "
        "after a warm-up. met: None where a target was not measured or not evaluated.",
        *(["Smoke run (tiny sizes, Triton interpreter): checks the code path; the numbers mean nothing."]
          if report["sizes"] == SIZES["smoke"] else []),
    ]
    write_report(out, stem, report["environment"], rows, notes)
    plt = pyplot()
    if plt is None:
        return
    # Horizontal bars, one per timing: a dozen long measurement names do not fit bench.common.bar_plot's groups.
    bars = {k[: -len("_ms")]: v for k, v in results.items() if k.endswith("_ms") and v is not None}
    figure, axis = plt.subplots(figsize=(9, 0.4 * len(bars) + 1.5))
    axis.barh(list(bars), list(bars.values()))
    axis.set_xlabel("milliseconds (median)")
    axis.set_title(stem)
    figure.tight_layout()
    figure.savefig(out / f"{stem}.png", dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs every measurement on CPU too")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        parser.error("the full-size benchmark needs CUDA; use --smoke (with TRITON_INTERPRET=1) on CPU")
    sizes = SIZES["smoke" if args.smoke else "full"]
    dtype = getattr(torch, args.dtype)
    results = run(**sizes, device=device, dtype=dtype)
    report = {
        "sizes": sizes, "dtype": args.dtype, "environment": environment(device.type),
        "results": results, "verdicts": _verdicts(results, evaluate=not args.smoke),
    }
    stem = f"actor_{device.type}_{sizes['n_rows']}x{sizes['vocab_size']}_{args.dtype}"
    _write(report, args.out, stem)
    print(json.dumps(report["verdicts"], indent=2))
    return report


if __name__ == "__main__":
    main()
