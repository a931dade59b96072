"""Plotting helpers: each function takes plain data and returns a matplotlib Figure; the caller
picks the file name (fig.savefig). Figures use the Agg canvas directly, never pyplot, so no
display or global backend state is involved and nothing needs closing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from keelctl.grad_profile import GRAD_FIGSIZE, SUBLAYER_AXIS, new_figure

# |dPPL| below this is drawn at it: a log axis cannot show 0.
DPPL_FLOOR = 1e-4


@dataclass
class AblationCurve:
    """One run's layer-removal results: dppl[k] is the PPL rise when removing layers[k]."""

    label: str
    layers: Sequence[int]
    dppl: Sequence[float]
    n_layers: int  # depth in the plotted unit
    threshold: float | None = None  # absolute dPPL of the effective-depth threshold


def ablation_figure(
    curves: Sequence[AblationCurve],
    *,
    unit: str = "sublayer",
    range_size: int = 1,
    threshold_label: str = "effective-depth threshold",
    floor: float = DPPL_FLOOR,
) -> Figure:
    """|dPPL| per removed layer on a log y-axis, one line per run. Removals that lowered PPL
    (dPPL < 0) are hollow markers; |dPPL| < floor is drawn at floor. The x-axis is the layer
    index when all runs have the same depth, relative depth otherwise."""
    fig = new_figure()
    ax = fig.add_subplot()
    relative = len({c.n_layers for c in curves}) > 1
    unit = {"sublayer": "sub-layer"}.get(unit, unit)
    what = unit if range_size == 1 else f"range of {range_size} {unit}s"
    for curve in curves:
        if relative:
            x = [(i + range_size / 2) / curve.n_layers for i in curve.layers]
        else:
            x = list(curve.layers)
        y = [max(abs(d), floor) for d in curve.dppl]
        (line,) = ax.plot(x, y, marker="o", markersize=4, linewidth=1.2, label=curve.label)
        neg = [(xi, yi) for xi, yi, d in zip(x, y, curve.dppl, strict=True) if d < 0]
        if neg:
            ax.plot(
                *zip(*neg, strict=True),
                linestyle="none",
                marker="o",
                markersize=6,
                color=line.get_color(),
                markerfacecolor="white",
            )
        if curve.threshold is not None and curve.threshold > 0:
            ax.axhline(curve.threshold, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_yscale("log")
    if relative:
        ax.set_xlabel(f"relative depth of the removed {what} (centre / depth in {unit}s)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(
            f"removed {what} (index of the first {unit}, 0 = bottom)"
            if range_size > 1
            else f"removed {unit} (index, 0 = bottom)"
        )
    ax.set_ylabel(f"|ΔPPL| = |PPL without it − full PPL| (floor {floor:g})")
    ax.set_title("Layer redundancy: perplexity cost of removing one " + what)
    handles, labels = ax.get_legend_handles_labels()
    hollow = Line2D([], [], linestyle="none", marker="o", color="grey", markerfacecolor="white")
    dotted = Line2D([], [], color="grey", linestyle=":")
    ax.legend(
        [*handles, hollow, dotted],
        [*labels, "hollow: ΔPPL < 0 (removal helped)", threshold_label],
        fontsize="small",
    )
    ax.grid(True, which="major", alpha=0.3)
    return fig


# ---- gradient flow (keelctl plot-grads; the line figure: keelctl/grad_profile.py) -----------


def grad_heatmap_figure(
    title: str, steps: Sequence[int], stream_grad_norm: np.ndarray, param_grad_norm: np.ndarray
) -> Figure:
    """log10 of both norms as step x sub-layer maps (arrays of shape (steps, sub-layers));
    rows are the recorded steps, earliest at the top."""
    fig = new_figure(*GRAD_FIGSIZE)
    axes = fig.subplots(1, 2)
    panels = [
        (stream_grad_norm, "log10 |dLoss/dx_in| (residual stream)"),
        (param_grad_norm, "log10 parameter-gradient norm"),
    ]
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
    for ax, (values, what) in zip(axes, panels, strict=True):
        with np.errstate(divide="ignore"):
            image = ax.imshow(
                np.log10(np.asarray(values, dtype=float)),
                aspect="auto",
                interpolation="nearest",
                cmap="viridis",
            )
        fig.colorbar(image, ax=ax, label=what)
        ax.set_xlabel(SUBLAYER_AXIS)
        ax.set_ylabel("optimizer step")
        ax.set_yticks(ticks, [str(steps[t]) for t in ticks])
        ax.set_title(f"{title}: {what.split(' ', 1)[1]}", fontsize="medium")
    return fig
