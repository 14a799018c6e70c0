"""The RL stage's per-step log as files a person opens: `rl_log.csv` and the curves in `rl_log.png`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from recbole_navigen.fileio import write_text_atomic

CSV_NAME, PLOT_NAME = "rl_log.csv", "rl_log.png"


def write_rl_log(records: list[dict], folder: str | Path) -> tuple[Path, Path]:
    """Write every step's row to `folder/rl_log.csv` and plot reward (per step and its running mean), KL,
    format rate and completion length per step to `folder/rl_log.png`; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(folder / CSV_NAME, buffer.getvalue())
    plot = folder / PLOT_NAME
    _plot(records, plot)
    return folder / CSV_NAME, plot


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the `window - 1` before it (fewer at the start)."""
    sums, total = [], 0.0
    for index, value in enumerate(values):
        total += value - (values[index - window] if index >= window else 0.0)
        sums.append(total / min(index + 1, window))
    return sums


def read_rl_log(path: str | Path) -> list[dict]:
    """The rows of an `rl_log.csv`, numbers as floats (the step as an int), for re-plotting."""
    rows = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                if value == "":
                    continue
                try:
                    parsed[key] = int(value) if key == "step" else float(value)
                except ValueError:
                    parsed[key] = value
            rows.append(parsed)
    return rows


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in records]
    window = max(1, len(records) // 20)
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    panels = [
        (axes[0, 0], f"mean reward (faint: per step; bold: over {window} steps)",
         ["reward", "cid2cid_reward", "cid2ins_reward"], True),
        (axes[0, 1], "KL to the reference policy", ["kl"], False),
        (axes[1, 0], "valid-format rate", ["valid_format_rate"], False),
        (axes[1, 1], "completion length (tokens)", ["completion_length"], False),
    ]
    for axis, title, names, smoothed in panels:
        for name in names:
            key = f"{name}_mean" if smoothed else name
            points = [(step, record[key]) for step, record in zip(steps, records) if key in record]
            if not points:
                continue
            xs, ys = zip(*points)
            if not smoothed:
                axis.plot(xs, ys, marker=".", label=name)
                continue
            line, = axis.plot(xs, ys, alpha=0.3, linewidth=0.8)
            axis.plot(xs, running_mean(ys, window), color=line.get_color(), linewidth=2, label=name)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if len(names) > 1:
            axis.legend()
    for axis in axes[1]:
        axis.set_xlabel("GRPO step")
    figure.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    partial.replace(path)
