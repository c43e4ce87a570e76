"""What a run leaves behind: the per-step table, ``metrics.jsonl``, learning-curve PNGs and the compare report."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

# (metrics key, table header, format) of the per-step table, in order.
TABLE_COLUMNS = (
    ("step", "step", "{:>4d}"),
    ("exact_match", "exact match", "{:>11.3f}"),
    ("reward_mean", "mean reward", "{:>11.3f}"),
    ("ntl_loss", "NTL loss", "{:>8.4f}"),
    ("digit_acc", "digit acc", "{:>9.3f}"),
    ("held_out_exact_match", "held-out EM", "{:>11.3f}"),
    ("seconds", "seconds", "{:>7.1f}"),
)

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96).
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
          2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


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


def mean_interval(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean and its two-sided 95% Student-t interval, ``mean +- t * sd / sqrt(n)``.

    None values are skipped; None when nothing is left; one value gives a zero-width interval (n = 1 has no spread).
    """
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, mean, mean
    quantile = _T_975[len(values) - 2] if len(values) - 1 <= len(_T_975) else 1.96
    half = quantile * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def format_interval(values: Sequence[float | None], signed: bool = False) -> str:
    """``"0.250 [0.120, 0.380]"`` (mean [95% interval]); ``"-"`` when there is no value."""
    interval = mean_interval(values)
    if interval is None:
        return "-"
    number = "{:+.3f}" if signed else "{:.3f}"
    mean, low, high = (number.format(v) for v in interval)
    return f"{mean} [{low}, {high}]"


def moving_average(values: Sequence[float | None], window: int) -> list[float | None]:
    """Trailing mean over the last ``window`` values (None values skipped; None where the window holds none)."""
    averaged = []
    for end in range(1, len(values) + 1):
        window_values = [v for v in values[max(0, end - window):end] if v is not None]
        averaged.append(statistics.fmean(window_values) if window_values else None)
    return averaged


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _none_as_nan(values):
    return [math.nan if v is None else v for v in values]


def plot_run(rows: Sequence[dict], held_out: Sequence[dict], path: Path, title: str) -> Path:
    """Learning curves of one run as a PNG: held-out greedy exact match, answer rate and exact match in any format
    at each evaluation (step 0 = before RL),
    and per RL step the sampled responses' exact match, mean reward and digit accuracy (moving average over 5
    steps, raw values faint), and the NTL loss."""
    plt = _pyplot()
    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    axis = axes[0]
    for key, label, color in (("exact_match", "exact match (sampled)", "tab:blue"),
                              ("reward_mean", "mean reward", "tab:orange"),
                              ("digit_acc", "digit accuracy (sampled)", "tab:green")):
        values = [row.get(key) for row in rows]
        axis.plot(steps, _none_as_nan(values), color=color, alpha=0.25, linewidth=1)
        axis.plot(steps, _none_as_nan(moving_average(values, 5)), color=color, label=label)
    axis.plot([point["step"] for point in held_out], [point["exact_match"] for point in held_out], color="black",
              marker="o", linewidth=2.5, label="held-out exact match (greedy)")
    for key, label, marker in (("answer_rate", "held-out: share with a graded answer", "x"),
                               ("exact_match_any_format", "held-out exact match, any format", "+")):
        axis.plot([point["step"] for point in held_out], [point.get(key, math.nan) for point in held_out],
                  color="gray", marker=marker, linestyle="--" if marker == "x" else ":", label=label)
    if len(held_out) >= 2:
        before, after = held_out[0]["exact_match"], held_out[-1]["exact_match"]
        axis.annotate(f"held-out EM {before:.3f} -> {after:.3f} ({after - before:+.3f})",
                      xy=(held_out[-1]["step"], after), xytext=(0.02, 0.93), textcoords="axes fraction",
                      fontsize=10, fontweight="bold")
    axis.set(xlabel="RL step", ylabel="fraction", ylim=(-0.02, 1.02))
    axis.legend(loc="center right", fontsize=8)
    axes[1].plot(steps, _none_as_nan([row.get("ntl_loss") for row in rows]), marker=".", color="tab:red")
    axes[1].set(xlabel="RL step", ylabel="NTL per target digit",
                title="policy NTL at the loss targets, before each update")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _band(axis, steps, curves, label, style):
    """Mean over seeds with its 95% t-interval shaded."""
    intervals = [mean_interval([curve[i] if i < len(curve) else None for curve in curves]) for i in range(len(steps))]
    means = [math.nan if iv is None else iv[0] for iv in intervals]
    (line,) = axis.plot(steps, means, label=label, **style)
    axis.fill_between(steps, [math.nan if iv is None else iv[1] for iv in intervals],
                      [math.nan if iv is None else iv[2] for iv in intervals], color=line.get_color(), alpha=0.15)


def plot_compare(runs: dict[str, list[dict]], path: Path, title: str, window: int = 5) -> Path:
    """Per variant, mean over seeds with a 95% t-interval band: held-out greedy exact match at each evaluation,
    and per RL step the mean reward and the sampled responses' exact match (moving average over ``window`` steps).

    ``runs`` maps a variant's label to one record per seed: ``{"rows": per-step metrics, "held_out": [{"step",
    "exact_match", "digit_acc"}, ...]}``.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    styles = [dict(marker=m, linestyle=d, markersize=4) for m, d in
              (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"), ("X", ":"))]
    for (label, seed_runs), style in zip(runs.items(), styles * len(runs)):
        held_steps = [point["step"] for point in seed_runs[0]["held_out"]]
        _band(axes[0], held_steps, [[p["exact_match"] for p in run["held_out"]] for run in seed_runs], label, style)
        steps = [row["step"] for row in seed_runs[0]["rows"]]
        for axis, key in ((axes[1], "reward_mean"), (axes[2], "exact_match")):
            curves = [moving_average([row.get(key) for row in run["rows"]], window) for run in seed_runs]
            _band(axis, steps, curves, label, dict(style, marker=None))
    seeds = len(next(iter(runs.values())))
    axes[0].set(xlabel="RL step", ylabel="held-out exact match (greedy)", title="held-out exact match")
    axes[1].set(xlabel="RL step", ylabel="mean reward", title=f"mean reward (moving average, {window} steps)")
    axes[2].set(xlabel="RL step", ylabel="exact match of sampled responses",
                title=f"sampled exact match (moving average, {window} steps)")
    for axis in axes:
        axis.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{title} - mean of {seeds} seeds, shaded: 95% t-interval")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def compare_markdown(runs: dict[str, list[dict]], last_steps: int) -> str:
    """Markdown table: per variant, mean [95% t-interval] over seeds of held-out greedy exact match and digit
    accuracy before and after RL, the paired change, the sampled exact match and reward over the last
    ``last_steps`` steps, and the held-out share of responses with a ``####`` answer before and after; then what each variant's reward paid, by kind of response (``runs`` as ``plot_compare``)."""

    def tail_mean(rows: Sequence[dict], key: str) -> float | None:
        values = [row[key] for row in rows[-last_steps:] if row.get(key) is not None]
        return statistics.fmean(values) if values else None

    def held(run, index, key):
        return run["held_out"][index].get(key)

    lines = [
        "| variant | seeds | held-out EM before | held-out EM after | change | held-out digit acc after | change "
        f"| sampled EM, last {last_steps} steps | mean reward, last {last_steps} steps "
        "| held-out answer rate before | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, seed_runs in runs.items():
        lines.append(
            f"| {label} | {len(seed_runs)} "
            f"| {format_interval([held(r, 0, 'exact_match') for r in seed_runs])} "
            f"| {format_interval([held(r, -1, 'exact_match') for r in seed_runs])} "
            f"| {format_interval([held(r, -1, 'exact_match') - held(r, 0, 'exact_match') for r in seed_runs], True)} "
            f"| {format_interval([held(r, -1, 'digit_acc') for r in seed_runs])} "
            f"| {format_interval([held(r, -1, 'digit_acc') - held(r, 0, 'digit_acc') for r in seed_runs], True)} "
            f"| {format_interval([tail_mean(r['rows'], 'exact_match') for r in seed_runs])} "
            f"| {format_interval([tail_mean(r['rows'], 'reward_mean') for r in seed_runs])} "
            f"| {format_interval([held(r, 0, 'answer_rate') for r in seed_runs])} "
            f"| {format_interval([held(r, -1, 'answer_rate') for r in seed_runs])} |"
        )
    lines += [
        "",
        "What the reward paid (mean score of the sampled responses of all steps, by kind; mean [95% interval] over "
        "seeds):",
        "",
        "| variant | correct answer | wrong answer | no answer |",
        "|---|---:|---:|---:|",
    ]
    for label, seed_runs in runs.items():
        cells = []
        for key in ("reward_correct", "reward_wrong", "reward_no_answer"):
            cells.append(format_interval([_weighted_mean(run["rows"], key) for run in seed_runs]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _weighted_mean(rows: Sequence[dict], key: str) -> float | None:
    """Mean of a per-kind score over all steps, each step weighted by how many responses of that kind it had."""
    total = sum(row[key] * row[f"{key}_count"] for row in rows if row.get(key) is not None)
    count = sum(row.get(f"{key}_count", 0) for row in rows if row.get(key) is not None)
    return total / count if count else None
