"""Figures on an Agg canvas, never pyplot: no display or global backend state, nothing to close;
the caller picks the file name (fig.savefig) or the tracker. Holds `new_figure`, which every
figure starts from, and the gradient-flow line figure, drawn both live in the trackers during
training (train/) and by `keelctl plot-grads` (analysis/); train/ must not import analysis/, so
it lives here, below both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib loads only when a figure is made (not on the train path)
    from matplotlib.figure import Figure


def new_figure(width: float = 7.0, height: float = 4.2) -> Figure:
    """A Figure on an Agg canvas (PNG/SVG/PDF output, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---- gradient flow ---------------------------------------------------------------------------

# Gradient-flow figures are GRAD_FIGSIZE inches saved at GRAD_DPI: 1200 x 450 pixels.
GRAD_FIGSIZE = (12.0, 4.5)
GRAD_DPI = 100
SUBLAYER_AXIS = "sub-layer index l (0 = bottom; block = l // 2)"


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
        ax.set_xlabel(SUBLAYER_AXIS)
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
