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

from keelctl.figures import GRAD_FIGSIZE, SUBLAYER_AXIS, GradLine, new_figure

# |dPPL| below this is drawn at it: a log axis cannot show 0.
DPPL_FLOOR = 1e-4


@dataclass
class AblationCurve:
    """One source's layer-removal results: dppl[k] is the PPL rise when removing layers[k];
    block_influence[i] and rel_update[i] describe layer i (NaN where not measured)."""

    label: str
    layers: Sequence[int]
    dppl: Sequence[float]
    n_layers: int  # depth in the plotted unit
    threshold: float | None = None  # absolute dPPL of the effective-depth threshold
    block_influence: Sequence[float] = ()
    rel_update: Sequence[float] = ()


def ablation_figure(
    curves: Sequence[AblationCurve],
    *,
    unit: str = "sublayer",
    range_size: int = 1,
    threshold_label: str = "effective-depth threshold",
    floor: float = DPPL_FLOOR,
) -> Figure:
    """Left: |dPPL| per removed layer on a log y-axis, one line per source; removals that
    lowered PPL (dPPL < 0) are hollow markers, |dPPL| < floor is drawn at floor. Middle and
    right (single layers): Block Influence 1 - cos(x_in, x_out) and |x_out - x_in| / |x_in|.
    The x-axis is the layer index when all sources have the same depth, else the normalised
    depth (layer centre / depth: 0 = bottom, 1 = top), so any mix can share it."""
    measured = range_size == 1 and any(np.isfinite(c.block_influence).any() for c in curves)
    fig = new_figure(17.0 if measured else 7.0, 4.2)
    ax, *extra = fig.subplots(1, 3 if measured else 1, squeeze=False)[0]
    relative = len({c.n_layers for c in curves}) > 1
    unit = {"sublayer": "sub-layer"}.get(unit, unit)
    what = unit if range_size == 1 else f"range of {range_size} {unit}s"

    def xs(curve: AblationCurve, layers) -> list[float]:
        return [(i + range_size / 2) / curve.n_layers if relative else i for i in layers]

    for curve in curves:
        x = xs(curve, curve.layers)
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
        for panel, values in zip(extra, (curve.block_influence, curve.rel_update), strict=False):
            panel.plot(xs(curve, range(len(values))), values, marker=".", color=line.get_color())
    if relative:
        xlabel = f"normalised depth of the removed {what} (centre / depth in {unit}s; 0 = bottom)"
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        xlabel = (
            f"removed {what} (index of the first {unit}, 0 = bottom)"
            if range_size > 1
            else f"removed {unit} (index, 0 = bottom)"
        )
    ax.set_yscale("log")
    ax.set_ylabel(f"|ΔPPL| = |PPL without it − full PPL| (floor {floor:g})")
    ax.set_title("Layer redundancy: perplexity cost of removing one " + what)
    titles = ("Block Influence 1 − cos(x_in, x_out)", "relative update |x_out − x_in| / |x_in|")
    for panel, title in zip(extra, titles, strict=False):
        panel.set_yscale("log")
        panel.set_title(f"{title} per {unit}")
    for panel in (ax, *extra):
        panel.set_xlabel(xlabel)
        panel.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    hollow = Line2D([], [], linestyle="none", marker="o", color="grey", markerfacecolor="white")
    dotted = Line2D([], [], color="grey", linestyle=":")
    ax.legend(
        [*handles, hollow, dotted],
        [*labels, "hollow: ΔPPL < 0 (removal helped)", threshold_label],
        fontsize="small",
    )
    return fig


# ---- gradient flow (keelctl plot-grads; the line figure: keelctl/figures.py) ---------------


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


def depth_grad_figure(lines: Sequence[GradLine], units: dict[str, str]) -> Figure:
    """grad_flow_figure's two panels for sources of different depths or units (sub-layers of a
    run, blocks of a transformers model): each layer at its normalised depth (centre / depth,
    0 = bottom, 1 = top); no theory curve (it is per sub-layer of one scheme)."""
    fig = new_figure(*GRAD_FIGSIZE)
    stream_ax, param_ax = fig.subplots(1, 2)
    groups = list(dict.fromkeys(line.group for line in lines))
    for line in lines:
        stream = np.asarray(line.stream_grad_norm, dtype=float)
        depth = (np.arange(len(stream)) + 0.5) / len(stream)
        style = dict(color=f"C{groups.index(line.group) % 10}", linewidth=1.4, marker=".")
        label = f"{line.label} [per {units[line.group].replace('sublayer', 'sub-layer')}]"
        stream_ax.plot(depth, stream / stream[-1], label=label, **style)
        param_ax.plot(depth, np.asarray(line.param_grad_norm, dtype=float), **style)
    for ax in (stream_ax, param_ax):
        ax.set_yscale("log")
        ax.set_xlabel("normalised depth (layer centre / depth: 0 = bottom, 1 = top)")
        ax.grid(True, which="major", alpha=0.3)
    stream_ax.set_ylabel("|dLoss/dx_in| at the layer ÷ at the top layer")
    stream_ax.set_title("Residual-stream gradient through depth")
    param_ax.set_ylabel("parameter-gradient L2 norm of the layer")
    param_ax.set_title("Parameter gradient per layer")
    handles, labels = stream_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    return fig
