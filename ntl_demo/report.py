"""What a run leaves behind: the per-step table, ``metrics.jsonl``, learning-curve PNGs and the compare report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

# (metrics key, table header, format) of the per-step table, in order.
TABLE_COLUMNS = (
    ("step", "step", "{:>4d}"),
    ("exact_match", "exact match", "{:>11.3f}"),
    ("reward_mean", "mean reward", "{:>11.3f}"),
    ("ntl_loss", "NTL loss", "{:>8.4f}"),
    ("digit_acc", "digit acc", "{:>9.3f}"),
    ("seconds", "seconds", "{:>7.1f}"),
)


def table_header() -> str:
    """The header line of the per-step table (widths match ``table_row``)."""
    widths = [len(fmt.format(0 if key == "step" else 0.0)) for key, _, fmt in TABLE_COLUMNS]
    return "  ".join(title.rjust(width) for (_, title, _), width in zip(TABLE_COLUMNS, widths))


def table_row(metrics: dict) -> str:
    """One step's line of the per-step table; a missing or None value prints as ``-``."""
    cells = []
    for key, _, fmt in TABLE_COLUMNS:
        value = metrics.get(key)
        width = len(fmt.format(0 if key == "step" else 0.0))
        cells.append("-".rjust(width) if value is None else fmt.format(value))
    return "  ".join(cells)


def markdown_table(rows: Sequence[dict]) -> str:
    """The per-step table of ``rows`` in markdown."""
    lines = ["| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
             "|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|"]
    for row in rows:
        cells = ["-" if row.get(key) is None else fmt.format(row[key]).strip() for key, _, fmt in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class MetricsLog:
    """Appends one JSON object per line to ``path`` (non-finite floats written as null, so the file stays JSON)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_run(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Learning curves of one run (exact match, mean reward, digit accuracy, NTL loss per RL step) as a PNG."""
    plt = _pyplot()
    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("exact_match", "exact match"), ("reward_mean", "mean reward"), ("digit_acc", "digit accuracy")):
        axes[0].plot(steps, [row.get(key) for row in rows], marker="o", label=label)
    axes[0].set(xlabel="RL step", ylabel="mean over sampled responses", ylim=(-0.02, 1.02))
    axes[0].legend()
    axes[1].plot(steps, [row.get("ntl_loss") for row in rows], marker="o", color="tab:red")
    axes[1].set(xlabel="RL step", ylabel="NTL per target digit", title="policy NTL at the loss targets, before each update")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _mean_and_spread(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Per step: mean, min and max over the seeds' curves (steps missing in a curve are skipped)."""
    length = max(map(len, curves))
    means, lows, highs = [], [], []
    for step in range(length):
        values = [curve[step] for curve in curves if step < len(curve) and curve[step] is not None]
        means.append(sum(values) / len(values) if values else math.nan)
        lows.append(min(values) if values else math.nan)
        highs.append(max(values) if values else math.nan)
    return means, lows, highs


def plot_compare(runs: dict[str, list[list[dict]]], path: Path, title: str) -> Path:
    """Exact match and digit accuracy per step for each mode: the mean over seeds, shaded from min to max."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    # distinct markers and dashes: modes that behave identically (e.g. all and em) stay visible on top of each other
    styles = [("o", "-"), ("s", "--"), ("^", ":")]
    for axis, key, label in ((axes[0], "exact_match", "exact match"), (axes[1], "digit_acc", "digit accuracy")):
        for (mode, seed_rows), (marker, dashes) in zip(runs.items(), styles * len(runs)):
            curves = [[row.get(key) for row in rows] for rows in seed_rows]
            means, lows, highs = _mean_and_spread(curves)
            steps = list(range(1, len(means) + 1))
            (line,) = axis.plot(steps, means, marker=marker, linestyle=dashes,
                                label=f"{mode} (mean of {len(seed_rows)} seeds)")
            axis.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.15)
        axis.set(xlabel="RL step", ylabel=label, title=f"{label} of sampled responses (min-max band)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def compare_markdown(runs: dict[str, list[list[dict]]], held_out: dict[str, list[float]], last_steps: int) -> str:
    """Markdown table: per mode, mean +- std over seeds of step 1, of the mean of the last ``last_steps`` steps,
    and of ``held_out`` (greedy exact match on held-out problems after RL, one value per seed)."""

    def summary(values: Sequence[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return f"{mean:.3f} ± {std:.3f}"

    def tail_mean(rows: Sequence[dict], key: str) -> float | None:
        values = [row[key] for row in rows[-last_steps:] if row.get(key) is not None]
        return sum(values) / len(values) if values else None

    lines = [
        f"| mode | seeds | exact match, step 1 | exact match, last {last_steps} steps | digit acc, step 1 "
        f"| digit acc, last {last_steps} steps | mean reward, last {last_steps} steps | held-out exact match |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, seed_rows in runs.items():
        lines.append(
            f"| {mode} | {len(seed_rows)} "
            f"| {summary([rows[0].get('exact_match') for rows in seed_rows])} "
            f"| {summary([tail_mean(rows, 'exact_match') for rows in seed_rows])} "
            f"| {summary([rows[0].get('digit_acc') for rows in seed_rows])} "
            f"| {summary([tail_mean(rows, 'digit_acc') for rows in seed_rows])} "
            f"| {summary([tail_mean(rows, 'reward_mean') for rows in seed_rows])} "
            f"| {summary(held_out[mode])} |"
        )
    return "\n".join(lines)
