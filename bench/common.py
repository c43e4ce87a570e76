"""Timing, memory and reporting helpers shared by the benchmarks (median of warmed-up runs, never on zeros)."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def environment(device: str) -> dict:
    """What a result needs to be read later: device name, versions, date."""
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
        "host_cpus": torch.get_num_threads(),
    }


def median_ms(fn, device: str, cpu_repeats: int = 5, grad_to_none=(), cuda_rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn()``: ``triton.testing.do_bench`` on CUDA (warm-up, L2 flush, about
    ``cuda_rep_ms`` of timed calls), perf_counter on CPU (one warm-up call, then ``cpu_repeats`` timed calls).

    The tensors in ``grad_to_none`` get their ``.grad`` cleared before every timed call (on CPU before the warm-up
    too), so that an ``fn`` that runs a backward writes a fresh gradient instead of accumulating into the last one.
    """
    if device == "cuda":
        import triton.testing

        return float(
            triton.testing.do_bench(
                fn, warmup=25, rep=cuda_rep_ms, grad_to_none=list(grad_to_none), return_mode="median"
            )
        )

    def call_ms():
        for tensor in grad_to_none:
            tensor.grad = None
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    call_ms()  # warm-up (and compilation)
    return statistics.median([call_ms() for _ in range(cpu_repeats)])


def peak_extra_mb(fn, device: str, grad_to_none=()) -> float | None:
    """Peak CUDA memory ``fn()`` allocates beyond what was allocated before it (None on CPU, where ``fn`` is not
    run). The tensors in ``grad_to_none`` get their ``.grad`` cleared first, so a backward's gradient is counted."""
    if device != "cuda":
        return None
    for tensor in grad_to_none:
        tensor.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def write_report(out_dir: Path, name: str, env: dict, rows: list[dict], notes: list[str]) -> Path:
    """``name.json`` (environment + rows) and ``name.md`` (a table of the rows, then the notes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        f"# {name}",
        "",
        ", ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *notes, ""]
    (out_dir / f"{name}.md").write_text("\n".join(lines))
    return out_dir / f"{name}.md"


def pyplot():
    """matplotlib's pyplot (headless), or None when matplotlib is not installed: the JSON and markdown results are
    written either way, only the picture is skipped."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (the .json and .md results are complete)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_plot(out_path: Path, title: str, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (skipped without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=label)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
