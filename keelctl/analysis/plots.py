"""Plotting helpers: each function takes plain data and returns a matplotlib Figure; the caller
picks the file name (fig.savefig). Figures use the Agg canvas directly, never pyplot, so no
display or global backend state is involved and nothing needs closing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

# |dPPL| below this is drawn at it: a log axis cannot show 0.
DPPL_FLOOR = 1e-4


def new_figure(width: float = 7.0, height: float = 4.2) -> Figure:
    """A Figure on an Agg canvas (PNG/SVG/PDF output, no display)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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


# ---- gradient flow (keelctl plot-grads) ------------------------------------------------------

# Gradient-flow figures are GRAD_FIGSIZE inches saved at GRAD_DPI: 1200 x 450 pixels.
GRAD_FIGSIZE = (12.0, 4.5)
GRAD_DPI = 100
_SUBLAYER_AXIS = "sub-layer index l (0 = bottom; block = l // 2)"


@dataclass
class GradLine:
    """One run at one step: per-sub-layer gradient norms, bottom first. Lines sharing a
    `group` (a run) share a colour, later ones drawn stronger; the legend shows each group
    once, with the label of its last line."""

    label: str
    group: str
    stream_grad_norm: Sequence[float]
    param_grad_norm: Sequence[float]


# The stream panel shows at most this many decades below the lowest measured value; a theory
# curve that falls further says so in its legend entry.
GRAD_THEORY_DECADES = 4


def grad_flow_figure(lines: Sequence[GradLine], theory: Mapping[str, Sequence[float]]) -> Figure:
    """Left: the residual-stream gradient |dLoss/dx_in| per sub-layer relative to its value at
    the top sub-layer, with each theory curve (label -> skip-path gain per sub-layer) rescaled
    the same way, dashed. Right: the parameter-gradient norm per sub-layer. Both log y."""
    fig = new_figure(*GRAD_FIGSIZE)
    stream_ax, param_ax = fig.subplots(1, 2)
    for ax in (stream_ax, param_ax):
        ax.set_yscale("log")
        ax.set_xlabel(_SUBLAYER_AXIS)
        ax.grid(True, which="major", alpha=0.3)
    groups = list(dict.fromkeys(line.group for line in lines))
    lowest = np.inf
    for line in lines:
        members = [m for m in lines if m.group == line.group]
        k = members.index(line)
        style = dict(
            color=f"C{groups.index(line.group) % 10}",
            alpha=0.35 + 0.65 * (k + 1) / len(members),
            linewidth=1.4,
            label=line.label if k == len(members) - 1 else None,
        )
        stream = np.asarray(line.stream_grad_norm, dtype=float)
        stream_ax.plot(stream / stream[-1], **style)
        param_ax.plot(np.asarray(line.param_grad_norm, dtype=float), **style)
        lowest = min(lowest, np.nanmin(stream / stream[-1]))
    floor = lowest / 10**GRAD_THEORY_DECADES
    dashes = [(4, 2), (1, 1.5), (6, 2, 1, 2), (2, 3)]
    for k, (label, gain) in enumerate(theory.items()):
        rel = np.asarray(gain, dtype=float) / gain[-1]
        if rel.min() < floor:
            label += f" (down to {rel.min():.1e}, off the axis)"
        stream_ax.plot(
            rel, color="black", linewidth=1.0, dashes=dashes[k % len(dashes)], label=label
        )
    if np.isfinite(floor):
        stream_ax.set_ylim(bottom=max(floor, stream_ax.get_ylim()[0]))
    stream_ax.set_ylabel("|dLoss/dx_in| at sub-layer l ÷ at the top")
    stream_ax.set_title("Residual-stream gradient through depth (dashed: skip-path theory)")
    param_ax.set_ylabel("parameter-gradient L2 norm of sub-layer l")
    param_ax.set_title("Parameter gradient per sub-layer")
    handles, labels = stream_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    return fig


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
        ax.set_xlabel(_SUBLAYER_AXIS)
        ax.set_ylabel("optimizer step")
        ax.set_yticks(ticks, [str(steps[t]) for t in ticks])
        ax.set_title(f"{title}: {what.split(' ', 1)[1]}", fontsize="medium")
    return fig
