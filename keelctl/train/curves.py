"""Loss and in-training evaluation curves of training runs, read from their metrics.csv; the
caller saves the figure."""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure

from keelctl.runs import Run

# Columns the in-training evaluation writes beside its scores (keelctl/train/evaluation.py).
EVAL_BOOKKEEPING = ("eval/seconds", "eval/failed")


def eval_metrics(run: Run) -> list[str]:
    """The eval/TASK/METRIC columns of a run's metrics.csv (trainer.eval_tasks), in file order."""
    return [n for n in run.metric_columns() if n.startswith("eval/") and n not in EVAL_BOOKKEEPING]


def last_eval_scores(run: Run) -> dict[str, float]:
    """{eval/TASK/METRIC: its value at the last step that has one} of a run's metrics.csv."""
    scores = {}
    for name in eval_metrics(run):
        if values := run.metric(name)[1]:
            scores[name] = values[-1]
    return scores


def eval_label(name: str) -> str:
    """eval/keel_nextline/acc -> "keel_nextline acc"."""
    return " ".join(name.removeprefix("eval/").rsplit("/", 1))


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` points (the raw per-step loss is noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_curves(runs: Mapping[str, Run], smooth: int = 20) -> Figure:
    """Training loss (smoothed over `smooth` logged steps) and validation loss against the
    optimizer step, one line per run; `runs` maps a label to a run. When
    any run has in-training evaluation scores, a second row has one panel per task metric."""
    eval_names = list(dict.fromkeys(n for r in runs.values() for n in eval_metrics(r)))
    fig = Figure(figsize=(10, 7.5 if eval_names else 4), layout="constrained")
    loss_fig, eval_fig = fig.subfigures(2, 1, height_ratios=[1, 0.9]) if eval_names else (fig, None)
    steps_shown = _loss_panels(loss_fig, runs, smooth)
    if eval_names:
        _eval_panels(eval_fig, runs, eval_names, steps_shown)
    return fig


def _loss_panels(fig, runs: Mapping[str, Run], smooth: int) -> tuple[float, float]:
    """The two loss panels; returns their step axis limits."""
    train_ax, val_ax = fig.subplots(1, 2, sharey=True)
    for i, (label, run) in enumerate(runs.items()):
        steps, losses = run.metric("train_loss")
        train_ax.plot(steps, _smooth(losses, smooth), color=f"C{i}", label=label)
        val_steps, val_losses = run.metric("val_loss")
        val_ax.plot(val_steps, val_losses, marker="o", color=f"C{i}", label=label)
    train_ax.set(
        title=f"training loss (mean of {smooth} logged steps)",
        xlabel="optimizer step",
        ylabel="cross-entropy (nats/token)",
    )
    val_ax.set(title="validation loss", xlabel="optimizer step")
    for ax in (train_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return train_ax.get_xlim()


def _eval_panels(fig, runs: Mapping[str, Run], names: list[str], xlim) -> None:
    """One panel per eval/TASK/METRIC: its score at each evaluated step, one line per run
    that has it (colours and step axis as in the loss panels, so the two rows line up)."""
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        for i, (label, run) in enumerate(runs.items()):
            steps, scores = run.metric(name)
            if steps:
                ax.plot(steps, scores, marker="o", color=f"C{i}", label=label)
        ax.set(title=f"{eval_label(name)} (in-training eval)", xlabel="optimizer step", xlim=xlim)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    axes[0].set(ylabel="score")
