"""Loss curves of training runs, read from their metrics.csv; the caller saves the figure."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from keelctl.errors import KeelError
from keelctl.runs import SUMMARY_JSON


def read_metric(metrics_csv: str | Path, name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one column of a Lightning metrics.csv, rows where it is set."""
    path = Path(metrics_csv)
    if not path.is_file():
        raise KeelError(f"{path} is missing; pass a run dir made by `keelctl train`")
    steps, values = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(name, "") != "":
                steps.append(int(row["step"]))
                values.append(float(row[name]))
    return steps, values


def read_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / SUMMARY_JSON
    if not path.is_file():
        raise KeelError(f"{path} is missing; is {run_dir} a `keelctl train` run that ended?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KeelError(
            f"{path} is not valid JSON ({e}); `keelctl train` writes it whole, so it was changed "
            "afterwards: restore it, or leave this run out"
        ) from None


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` points (the raw per-step loss is noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_curves(metrics_csvs: Mapping[str, str | Path], smooth: int = 20) -> Figure:
    """Training loss (smoothed over `smooth` logged steps) and validation loss against the
    optimizer step, one line per run; `metrics_csvs` maps a label to a metrics.csv path."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    train_ax, val_ax = fig.subplots(1, 2, sharey=True)
    for label, path in metrics_csvs.items():
        steps, losses = read_metric(path, "train_loss")
        (line,) = train_ax.plot(steps, _smooth(losses, smooth), label=label)
        val_steps, val_losses = read_metric(path, "val_loss")
        val_ax.plot(val_steps, val_losses, marker="o", color=line.get_color(), label=label)
    train_ax.set(
        title=f"training loss (mean of {smooth} logged steps)",
        xlabel="optimizer step",
        ylabel="cross-entropy (nats/token)",
    )
    val_ax.set(title="validation loss", xlabel="optimizer step")
    for ax in (train_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
